"""What a benchmark hands to ``bench/report.py``: figures, their references, and data to plot.

Every bench script prints its own plain-text numbers and also calls these
functions for the figures that matter. When ``bench/report.py`` runs a script
it sets ``OFNODE_BENCH_RESULTS`` to a file, and each call appends one JSON line
there; run alone, the calls do nothing. So a script never depends on the
report, and the report never parses printed text.

A *figure* is one number, with the reference it is compared against measured
in the same run (``reference``) and the issue's target (``target``, with
``better`` saying which way is good). *samples* are a distribution (plotted as
a CDF), *series* are y against x (plotted as lines).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

__all__ = ["figure", "samples", "series"]

_ENV = "OFNODE_BENCH_RESULTS"


def _emit(record: dict) -> None:
    path = os.environ.get(_ENV)
    if not path:
        return
    record["bench"] = Path(sys.argv[0]).stem
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def figure(key: str, value: float, unit: str, *, label: str, reference: float | None = None,
           reference_label: str = "", target: float | None = None,
           better: Literal["lower", "higher"] = "lower") -> None:
    """One measured number. ``key`` is stable (the report orders and links by it)."""
    _emit({"kind": "figure", "key": key, "value": float(value), "unit": unit, "label": label,
           "reference": None if reference is None else float(reference), "reference_label": reference_label,
           "target": None if target is None else float(target), "better": better})


def samples(key: str, values: Sequence[float], unit: str, *, label: str,
            reference: Sequence[float] | None = None, reference_label: str = "") -> None:
    """A distribution (e.g. every latency measured), optionally beside a reference distribution."""
    _emit({"kind": "samples", "key": key, "values": [float(v) for v in values], "unit": unit, "label": label,
           "reference": None if reference is None else [float(v) for v in reference],
           "reference_label": reference_label})


def series(key: str, x: Sequence[float], y: Sequence[float], *, x_unit: str, y_unit: str, label: str,
           reference: Sequence[float] | None = None, reference_label: str = "") -> None:
    """``y`` against ``x`` (e.g. RSS over time, latency vs nodes), optionally beside a reference line."""
    _emit({"kind": "series", "key": key, "x": [float(v) for v in x], "y": [float(v) for v in y],
           "x_unit": x_unit, "y_unit": y_unit, "label": label,
           "reference": None if reference is None else [float(v) for v in reference],
           "reference_label": reference_label})
