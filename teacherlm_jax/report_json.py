"""JSON for the reports jobs write (metrics, summaries, predictions): strict, never NaN or Infinity.

Python's `json` writes a NaN float as the bare token `NaN`, which is not JSON: jq, JavaScript and strict
parsers reject the whole file. A value that cannot be computed is written null by its writer, with a note
saying why; one that reaches here non-finite is a bug, raised with where it is in the report.
"""
from __future__ import annotations

import json
import math
from typing import Any


def dumps(obj: Any, **kwargs: Any) -> str:
    """`json.dumps(obj, allow_nan=False, **kwargs)`, whose error names the non-finite value's key path."""
    where = _non_finite(obj, "")
    if where is not None:
        raise ValueError(f"report value {where or '(top level)'} is not finite; a report writes null for a "
                         f"value that cannot be computed, and says why")
    return json.dumps(obj, allow_nan=False, **kwargs)


def _non_finite(obj: Any, path: str) -> str | None:
    if isinstance(obj, float):
        return None if math.isfinite(obj) else path
    if isinstance(obj, dict):
        items = [(f"{path}.{k}" if path else str(k), v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
    else:
        return None
    return next((found for p, v in items if (found := _non_finite(v, p)) is not None), None)
