"""The feature contract (after ``extract``): shapes, dims, finiteness, equal visual/audio lengths, coverage (GX Core 1.x)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from emi.config import MODALITIES
from emi.contracts.report import Problem, ValidationReport, expectation_row, run_suite, write_report
from emi.data.dataset import split_ids
from emi.features.store import load_shard, shard_path


def feature_table(out_dir: Path) -> tuple[pd.DataFrame, dict]:
    """One row per clip with what its arrays look like (dims, lengths, finite)."""
    index = pd.read_csv(out_dir / "index.csv", dtype={"id": str}, keep_default_na=False)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    rows = []
    for shard, group in index.groupby("shard", sort=True):
        parts = {m: load_shard(shard_path(out_dir, m, int(shard))) for m in MODALITIES}
        text_pos = {str(i): k for k, i in enumerate(parts["text"]["ids"])}
        for r in group.itertuples():
            v = parts["visual"]["data"][r.offset:r.offset + r.n_steps]
            a = parts["audio"]["data"][r.audio_offset:r.audio_offset + r.n_audio_steps]
            t = parts["text"]["data"][text_pos[r.id]] if r.id in text_pos else np.full(1, np.nan)
            rows.append({"id": r.id, "split": r.split, "status": r.status, "detail": r.detail,
                         "n_steps": r.n_steps, "n_audio_steps": r.n_audio_steps,
                         "visual_dim": int(v.shape[1]), "audio_dim": int(a.shape[1]), "text_dim": int(t.shape[-1]),
                         "finite": bool(np.isfinite(v).all() and np.isfinite(a).all() and np.isfinite(t).all()),
                         "visual_status": r.visual_status, "audio_status": r.audio_status,
                         "text_status": r.text_status})
    return pd.DataFrame(rows), manifest


def validate_features(out_dir: Path, max_error_fraction: float, report_dir: Path | None,
                      raw_dir: Path | None = None) -> ValidationReport:
    """Check the feature store against the clip list (``raw_dir``) and the manifest's dims; never raises on bad
    data (the stage calls ``raise_if_failed``)."""
    import great_expectations as gx

    out_dir = Path(out_dir)
    table, manifest = feature_table(out_dir)
    dims = manifest["dims"]
    E = gx.expectations
    ok = table[table["status"] == "ok"].reset_index(drop=True)
    index_cols = ["split", "id"]
    results = run_suite("feature_clips", table, [
        E.ExpectColumnValuesToNotBeNull(column="id"),
        E.ExpectColumnValuesToBeUnique(column="id"),
        E.ExpectColumnValuesToBeInSet(column="status", value_set=["ok"]),
    ], index_cols)
    if len(ok):
        results += run_suite("feature_arrays", ok, [
            E.ExpectColumnValuesToBeBetween(column="n_steps", min_value=1),
            E.ExpectColumnPairValuesToBeEqual(column_A="n_steps", column_B="n_audio_steps"),
            E.ExpectColumnValuesToBeInSet(column="visual_dim", value_set=[dims["visual"]]),
            E.ExpectColumnValuesToBeInSet(column="audio_dim", value_set=[dims["audio"]]),
            E.ExpectColumnValuesToBeInSet(column="text_dim", value_set=[dims["text"]]),
            E.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
        ], index_cols)

    problems = []
    for res in results:
        if res["success"]:
            continue
        kind = res["expectation_config"]["type"]
        for hit in res["result"].get("unexpected_index_list") or []:
            clip = hit.get("id")
            row = table[table["id"] == clip].iloc[0] if clip is not None else None
            if kind == "expect_column_values_to_be_in_set" and res["expectation_config"]["kwargs"]["column"] == "status":
                detail = f"raw/{clip}.mp4 could not be processed: {row['detail']}"
            else:
                detail = f"{kind} {res['expectation_config']['kwargs']}"
            problems.append(Problem(hit.get("split", "?"), None, clip, kind, detail))

    fatal = []
    if raw_dir is not None:
        listed = {i for ids in split_ids(raw_dir).values() for i in ids}
        missing = sorted(listed - set(table["id"]))
        if missing:
            fatal.append(f"{len(missing)} listed id(s) have no features: {', '.join(missing[:20])}")

    bad = {p.Filename for p in problems}
    fraction = len(bad) / len(table) if len(table) else 1.0
    statuses = {m: table[f"{m}_status"].value_counts().to_dict() for m in MODALITIES}
    warnings = [f"{m}: {n} clip(s) {s} -> that modality is masked for them"
                for m in MODALITIES for s, n in statuses[m].items() if s not in ("ok", "error")]
    random = manifest.get("random_init", [])
    if random:
        warnings.append(f"encoders with RANDOM weights: {', '.join(random)}")
    report = ValidationReport(
        stage="extract", passed=not fatal and fraction <= max_error_fraction, n_rows=len(table),
        n_bad_rows=len(bad), error_fraction=round(fraction, 6), max_error_fraction=max_error_fraction,
        fatal=fatal, problems=problems, warnings=warnings,
        expectations=[expectation_row(r) for r in results],
        facts={"clips": len(table), "clips_ok": len(ok), "steps_total": int(ok["n_steps"].sum()),
               "steps_per_clip": {"min": int(ok["n_steps"].min()) if len(ok) else 0,
                                  "max": int(ok["n_steps"].max()) if len(ok) else 0},
               "fps": manifest["fps"], "dims": dims, "status_counts": statuses,
               "encoders": [f"{e['role']}: {e['kind']} {e['name']} ({e['source']})" for e in manifest["encoders"]],
               "random_init": random},
    )
    if report_dir is not None:
        write_report(report, Path(report_dir))
    return report
