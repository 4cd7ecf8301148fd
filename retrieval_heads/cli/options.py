"""Option types shared by the subcommands: comma-separated lists whose errors name the option.

Click names the option in the message when a *type* rejects a value (``Invalid value for
'--context-lens': ...``), which a conversion inside the command body cannot do.
"""

from __future__ import annotations

import click


class _CommaList(click.ParamType):
    """``"256,512"`` -> ``(256, 512)``; an empty list is an error."""

    def __init__(self, convert_one, what: str):
        self._convert_one = convert_one
        self.name = f"comma-separated {what}"
        self._what = what

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).split(",")]
        try:
            out = tuple(self._convert_one(p) for p in parts if p)
        except ValueError:
            out = ()
        if not out:  # a bad number, or no number at all
            self.fail(f"expected comma-separated {self._what} like '256,512', got {value!r}", param, ctx)
        return out


INT_LIST = _CommaList(int, "integers")
FLOAT_LIST = _CommaList(float, "numbers")
POSITIVE = click.IntRange(min=1)
