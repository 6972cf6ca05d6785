"""Plain-text tables for terminal summaries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def significant(value: float, digits: int) -> str:
    """`value` to `digits` significant digits, or more where those would round a fraction up
    to 1: a ce_loss_recovered of 0.9995 is not 1, and must read differently from 0.95."""
    text = f"{value:.{digits}g}"
    while abs(value) < 1 and abs(float(text)) >= 1 and digits < 9:
        digits += 1
        text = f"{value:.{digits}g}"
    return text


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return significant(value, 4) if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)
