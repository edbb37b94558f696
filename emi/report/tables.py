"""Markdown tables: the one table renderer every report uses (the validation reports of the data stages and the
evaluation report alike). Kept apart from the evaluation report's wording (``emi.report.markdown``) so that a change
to that wording reruns only the stages that write it, not every stage with a validation report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


def _cell(value, fmt: str | None, digits: int) -> str:
    if fmt is not None and isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return format(value, fmt)
    if isinstance(value, (float, np.floating)):
        return "–" if np.isnan(value) else f"{value:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(rows: pd.DataFrame | Sequence[Mapping], digits: int = 4, formats: Mapping[str, str] | None = None,
             headers: Mapping[str, str] | None = None, columns: Sequence[str] | None = None) -> str:
    """A GitHub markdown table: floats with ``digits`` decimals (NaN as –), ``formats`` per column (format spec),
    ``headers`` renames columns for display; ``columns`` orders (and, for no rows, names) them."""
    if isinstance(rows, pd.DataFrame):
        frame = rows if columns is None else rows[list(columns)]
    else:  # object dtype: an int column with a None stays ints, not floats
        frame = pd.DataFrame(list(rows), columns=list(columns) if columns else None, dtype=object)
    formats, headers = formats or {}, headers or {}
    cols = list(frame.columns)
    lines = ["| " + " | ".join(headers.get(c, str(c)) for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, formats.get(c), digits) for c, v in zip(cols, row)) + " |")
    return "\n".join(lines)


def pm(mean: float, sd: float, digits: int = 4) -> str:
    """``mean ± sd`` (the mean alone when there is no sd: one seed), – for NaN."""
    if mean is None or not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None and np.isfinite(sd) else "")
