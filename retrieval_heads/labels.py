"""How the library writes things for people: one head label everywhere (``L3H0``), durations.

One way to name a head everywhere (CLI, tables, reports, notebooks): ``L3H0``.

This is how TransformerLens writes heads (``L{layer}H{head}``). Where the layer's kind helps
a reader it follows in parentheses, ``L3H0 (F)``; the label itself never changes.

    >>> head_label(3, 0)
    'L3H0'
    >>> head_label(3, 0, "F")
    'L3H0 (F)'
    >>> parse_head_label("L3H0"), parse_head_label("3.0")
    ((3, 0), (3, 0))
"""

from __future__ import annotations

import re

_LABEL = re.compile(r"^\s*L?(\d+)\s*(?:H|\.|:)\s*(\d+)\s*$", re.IGNORECASE)


def head_label(layer: int, head: int, kind: str | None = None) -> str:
    """``L{layer}H{head}``, with the layer kind appended as `` (F)`` when given."""
    label = f"L{int(layer)}H{int(head)}"
    return f"{label} ({kind})" if kind else label


def parse_head_label(text: str) -> tuple[int, int]:
    """(layer, head) from ``L3H0`` (also accepted: ``l3h0``, ``3.0``, ``3:0``)."""
    m = _LABEL.match(str(text))
    if m is None:
        raise ValueError(f"heads: expected a head like 'L3H1' (or '3.1'), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def format_duration(seconds: float) -> str:
    """``72.4`` -> ``"1m12s"``, ``3725`` -> ``"1h02m05s"``, ``9.6`` -> ``"9s"``."""
    s = round(max(seconds, 0.0))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"
