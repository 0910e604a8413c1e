"""The results format of every benchmark: a top-level "targets" object, one entry per target an issue names.

Each entry is {"value": number, "threshold": number, "op": ">=" | "<=", "met": bool}; a benchmark writes it into
`benchmarks/results/NAME_<device>.json` beside its full config, split and wall times.
"""

from __future__ import annotations

import operator
from typing import Any

OPS = {">=": operator.ge, "<=": operator.le}


def target(value: float, threshold: float, op: str) -> dict[str, Any]:
    """One target: the measured `value` against `threshold` under `op` (">=" or "<="), and whether it is met (both
    numbers as Python floats, so NumPy scalars serialise to JSON)."""
    if op not in OPS:
        raise ValueError(f"a target's op is one of {sorted(OPS)}, got {op!r}")
    value, threshold = float(value), float(threshold)
    return {"value": value, "threshold": threshold, "op": op, "met": bool(OPS[op](value, threshold))}
