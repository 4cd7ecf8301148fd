"""What the benchmark scripts share: writing their JSON result where the README says."""

from __future__ import annotations

import json
from pathlib import Path


def write_result(path, result: dict) -> Path:
    """``result`` as indented JSON at ``path`` (folders created); prints and returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return out
