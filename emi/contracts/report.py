"""Data contracts between stages: the one problem/report type every checkpoint returns, and the GX plumbing.

Each checkpoint (``emi.contracts.raw``, ``.transcripts``, ``.features``) runs its Great Expectations (GX Core 1.x)
suite, turns the results into row-level ``Problem``s (split, CSV line, clip id, what is wrong) and returns a
``ValidationReport``; it never raises on bad data. The stage writes the report and calls ``raise_if_failed``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no phoning home; this runs offline
logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO chatter on import is not our report

import numpy as np
import pandas as pd

from emi.data.dataset import SPLITS, DatasetError
from emi.report.tables import md_table
from emi.utils import write_json, write_text


class DataValidationError(DatasetError):
    """Input broke a stage's contract; the message names every failing row or file."""

    def __init__(self, message: str, report: ValidationReport | None = None):
        super().__init__(message)
        self.report = report


@dataclass
class Problem:
    split: str
    row: int | None  # line number in the split CSV (header = line 1)
    Filename: str | None
    check: str
    detail: str


@dataclass
class ValidationReport:
    stage: str
    passed: bool
    n_rows: int
    n_bad_rows: int
    error_fraction: float
    max_error_fraction: float
    fatal: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    expectations: list[dict[str, Any]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    json_path: str | None = None
    md_path: str | None = None

    def summary(self, limit: int = 20) -> str:
        lines = [f"{self.stage} validation {'passed' if self.passed else 'FAILED'}: "
                 f"{self.n_bad_rows}/{self.n_rows} rows with problems "
                 f"(error fraction {self.error_fraction:.3f}, tolerance {self.max_error_fraction:.3f})"]
        lines += [f"  fatal: {msg}" for msg in self.fatal]
        for p in self.problems[:limit]:
            where = f"{p.split}_split.csv line {p.row}" if p.row is not None else p.split
            lines.append(f"  {where} (id {p.Filename}): {p.detail}")
        if len(self.problems) > limit:
            lines.append(f"  ... {len(self.problems) - limit} more in {self.md_path or 'the report'}")
        return "\n".join(lines)

    def raise_if_failed(self) -> ValidationReport:
        """The stage's verdict: ``DataValidationError`` listing every problem when the contract is broken."""
        if not self.passed:
            raise DataValidationError(self.summary(limit=len(self.problems)), self)
        return self


# ----------------------------------------------------------------------------- GX plumbing
def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    gx_log = logging.getLogger("great_expectations")
    if not gx_log.isEnabledFor(logging.DEBUG) or logging.getLogger().level > logging.DEBUG:
        gx_log.setLevel(logging.WARNING)  # GX sets INFO on import; its chatter is not our report
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return ctx


def run_suite(name: str, frame: pd.DataFrame, expectations: list, index_columns: list[str]) -> list[dict]:
    """Validate ``frame`` against ``expectations``; return GX results as plain dicts."""
    import great_expectations as gx

    ctx = _context()
    batch = (
        ctx.data_sources.add_pandas(f"{name}_source")
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe("whole")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    suite = ctx.suites.add(gx.ExpectationSuite(name=name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    result = batch.validate(
        suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": index_columns}
    )
    return [r.to_json_dict() for r in result.results]


def expectation_row(res: dict) -> dict[str, Any]:
    cfg = res["expectation_config"]
    kwargs = {k: v for k, v in cfg["kwargs"].items() if k != "batch_id"}
    return {"expectation": cfg["type"], "kwargs": kwargs, "success": res["success"],
            "unexpected_count": res["result"].get("unexpected_count", 0)}


def write_report(report: ValidationReport, report_dir: Path) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    json_path = report_dir / f"{report.stage}.json"
    md_path = report_dir / f"{report.stage}.md"
    report.json_path, report.md_path = str(json_path), str(md_path)
    write_json(json_path, asdict(report))
    write_text(md_path, render_markdown(report))


def render_markdown(report: ValidationReport) -> str:
    status = "PASSED" if report.passed else "FAILED"
    lines = [
        f"# Validation: {report.stage} — {status}",
        "",
        f"- rows checked: {report.n_rows}",
        f"- rows with problems: {report.n_bad_rows} (error fraction {report.error_fraction:.4f}, "
        f"tolerance {report.max_error_fraction:.4f})",
    ]
    if report.fatal:
        lines += ["", "## Fatal", ""] + [f"- {msg}" for msg in report.fatal]
    if report.problems:
        lines += ["", "## Problems by row", "", md_table(
            [{"split": p.split, "line": p.row, "id": p.Filename, "check": p.check, "problem": p.detail}
             for p in report.problems])]
    if report.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report.warnings]
    lines += ["", "## Expectations (Great Expectations)", "", md_table(
        [{"expectation": e["expectation"], "arguments": ", ".join(f"{k}={v}" for k, v in e["kwargs"].items()),
          "ok": "yes" if e["success"] else "no", "failing rows": e["unexpected_count"]}
         for e in report.expectations], columns=["expectation", "arguments", "ok", "failing rows"])]
    lines += ["", "## Facts", ""] + [f"- {k}: {v}" for k, v in report.facts.items()]
    return "\n".join(lines) + "\n"


def num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else round(float(x), 4)


def problem_order(p: Problem) -> tuple:
    return (SPLITS.index(p.split) if p.split in SPLITS else 9, p.row or 0, p.check)
