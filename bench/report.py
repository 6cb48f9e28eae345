"""Figures, targets and verdicts: one :class:`Row` per measured case, printed as a table per
workload and written as JSON lines."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from typing import IO, Any


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure is a latency someone really saw)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


@dataclass
class Row:
    """One measured case of a workload: its figures, the target it is held to and the verdict."""

    workload: str
    case: str
    figures: dict[str, Any]
    target: str = ""
    met: bool | None = None  # None: no target for this row (a baseline or an informative figure)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: ""}[self.met]


class Report:
    """Collects rows; prints each as it comes (so a long run shows progress) and a summary table."""

    def __init__(self, jsonl: IO[str] | None = None, out: IO[str] = sys.stderr) -> None:
        self.rows: list[Row] = []
        self.jsonl = jsonl
        self.out = out

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(f"[bench] {row.workload} / {row.case}: {format_figures(row.figures)}"
              + (f"  [{row.verdict}: {row.target}]" if row.target else "")
              + (f"  ({row.note})" if row.note else ""), file=self.out, flush=True)
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(asdict(row) | {"verdict": row.verdict}, default=str) + "\n")
            self.jsonl.flush()
        return row

    def table(self) -> str:
        lines: list[str] = []
        for workload in dict.fromkeys(r.workload for r in self.rows):
            lines += ["", f"## {workload}", "", "| case | figures | target | verdict |", "|---|---|---|---|"]
            for r in (r for r in self.rows if r.workload == workload):
                note = f" ({r.note})" if r.note else ""
                lines.append(f"| {r.case} | {format_figures(r.figures)}{note} | {r.target} | {r.verdict} |")
        return "\n".join(lines)


def format_figures(figures: dict[str, Any]) -> str:
    parts = []
    for key, value in figures.items():
        if isinstance(value, float):
            value = f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        parts.append(f"{key} {value}")
    return ", ".join(parts)
