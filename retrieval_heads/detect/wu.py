"""Wu et al.'s head-score files (nightdessert/Retrieval_Head, ``head_score/<model>.json``):
``{"layer-head": [per-sample copy scores], ...}``, one list per head, the head's retrieval score
being the list's mean. ``retrieval-heads export RUN --format wu`` writes them from a scan
(``retrieval_heads.pipeline.export``); ``load_wu_scores`` reads one back, ours or published.

    >>> import json, tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "m.json")
    >>> _ = open(f, "w").write(json.dumps({"0-1": [0.5, 1.0], "2-0": [0.0]}))
    >>> s = load_wu_scores(f)
    >>> s[(0, 1)], wu_mean_scores(s)[(0, 1)]
    ([0.5, 1.0], 0.75)
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def load_wu_scores(path) -> dict[tuple[int, int], list[float]]:
    """``{(layer, head): [per-sample scores]}`` of a Wu-format JSON file; ``ValueError`` naming the
    file and the bad key or value."""
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{p}: no such file") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: not a JSON file ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{p}: expected a JSON object {{\"layer-head\": [scores]}}, got {type(d).__name__}")
    out = {}
    for k, v in d.items():
        parts = k.split("-")
        if len(parts) != 2 or not all(x.isdigit() for x in parts):
            raise ValueError(f"{p}: key {k!r} is not \"layer-head\" (two non-negative integers)")
        if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise ValueError(f"{p}: {k}: expected a list of numbers, got {v!r:.60}")
        out[(int(parts[0]), int(parts[1]))] = [float(x) for x in v]
    return out


def wu_mean_scores(scores: dict) -> dict[tuple[int, int], float]:
    """The head score as Wu ranks heads: the mean of each list (NaN for an empty list)."""
    return {k: (sum(v) / len(v) if v else math.nan) for k, v in scores.items()}


def wu_top_heads(scores: dict, k: int = 20) -> list[tuple[int, int, float]]:
    """The k heads of highest mean score, ``(layer, head, score)``, best first."""
    means = [(l, h, s) for (l, h), s in wu_mean_scores(scores).items() if not math.isnan(s)]
    return sorted(means, key=lambda t: -t[2])[:k]
