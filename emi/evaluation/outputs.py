"""evaluate's files beside report.md: the robustness tables (csv, json, markdown, every seed's rows) and the probe
table. Each holds results only, never timings or the run's circumstances: same inputs, same bytes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from emi.evaluation.probes import PROBE_COLUMNS
from emi.evaluation.robustness import Robustness
from emi.features.damage import DAMAGED_MODALITY
from emi.report.robustness import robustness_markdown
from emi.utils import finite, write_json, write_text


def write_robustness(reports_dir: Path, rob: pd.DataFrame, mixed: pd.DataFrame, measured: Robustness,
                     clean_diff: float, mixed_rate: float) -> dict[str, Path]:
    """``robustness.csv`` / ``.md`` / ``.json`` (condition x fusion, mean and sd over seeds; the mixed condition's
    weights per damage kind) and ``robustness_seeds.csv`` (one row per condition x fusion x seed)."""
    paths = {"robustness_csv": write_text(reports_dir / "robustness.csv", rob.to_csv(index=False,
                                                                                       float_format="%.6f")),
             "robustness_seeds_csv": write_text(reports_dir / "robustness_seeds.csv",
                                                measured.runs.to_csv(index=False, float_format="%.6f")),
             "robustness_md": write_text(reports_dir / "robustness.md",
                                         robustness_markdown(rob, mixed, DAMAGED_MODALITY, mixed_rate))}
    table = {f"{row['condition']}/{row['fusion']}": {k: finite(v) for k, v in row.items()
                                                     if k not in ("condition", "fusion")}
             for row in rob.to_dict(orient="records")}  # a mapping keyed by what a reader looks up; JSON null
    table.update({f"mixed_weights/{row['damage']}/{row['fusion']}": {
        k: finite(v) for k, v in row.items() if k not in ("damage", "fusion")} for row in mixed.to_dict(orient="records")})
    table["check"] = {"clean_vs_stored_max_abs_diff": finite(clean_diff)}
    paths["robustness_json"] = write_json(reports_dir / "robustness.json", table)
    return paths


def write_probe(reports_dir: Path, probe: pd.DataFrame | None) -> Path:
    """``probe.csv``; without rendered controls (licensed data) the header alone (the report says why)."""
    table = probe if probe is not None else pd.DataFrame(columns=PROBE_COLUMNS)
    return write_text(reports_dir / "probe.csv", table.to_csv(index=False, float_format="%.6f"))
