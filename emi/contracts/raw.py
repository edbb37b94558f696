"""The raw-data contract (after ``download``): split files, header, labels, ids, readable clips, durations."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emi.config import EMOTIONS, SPLIT_HEADER, DataParams
from emi.contracts.report import (Problem, ValidationReport, expectation_row, num, problem_order, run_suite,
                                  write_report)
from emi.data.dataset import (CLIP_DIR, CLIP_SUFFIX, REQUIRED_SPLITS, SPLITS, ClipIds, DatasetError, clip_path,
                              has_labels, label_values, misnamed_clips, read_split, split_path)
from emi.data.media import probe

INDEX_COLUMNS = ["split", "row", "Filename"]
PROBE_THREADS = 4


def header_problem(split: str, frame: pd.DataFrame) -> str | None:
    import great_expectations as gx

    allowed = [list(SPLIT_HEADER)] + ([["Filename"]] if split == "test" else [])
    if list(frame.columns) in allowed:
        return None
    # GX states the contract and the observed header for the report
    res = run_suite(f"{split}_header", frame,
                    [gx.expectations.ExpectTableColumnsToMatchOrderedList(column_list=list(SPLIT_HEADER))], [])
    observed = res[0]["result"].get("observed_value", list(frame.columns))
    missing = [c for c in SPLIT_HEADER if c not in observed]
    extra = [c for c in observed if c not in SPLIT_HEADER]
    hint = "; ".join(x for x in (f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else "") if x)
    if len(frame.columns) == 1 and any(sep in frame.columns[0] for sep in ";\t|"):
        hint = "one column only: the file is not comma-delimited"
    return (f"{split}_split.csv: header {observed} does not match "
            f"{','.join(SPLIT_HEADER)}" + (f" ({hint})" if hint else ""))


def label_detail(raw: str, column: str) -> str:
    if raw == "":
        return f"{column} is empty"
    try:
        value = float(raw)
    except ValueError:
        return f"{column} is {raw!r}, not a number"
    if np.isnan(value):
        return f"{column} is NaN"
    return f"{column} = {value:g} is outside [0, 1]"


def split_table(raw_dir: Path, clip_ids: ClipIds, fatal: list[str]) -> tuple[pd.DataFrame, dict]:
    """Every row of every split file (split, CSV line, resolved id, id problem, labels), and the label cells as
    written (for the report's wording); file-level problems go to ``fatal``."""
    frames: list[pd.DataFrame] = []
    raw_labels: dict[tuple[str, int], dict[str, str]] = {}
    for split in SPLITS:
        path = split_path(raw_dir, split)
        if not path.is_file():
            if split in REQUIRED_SPLITS:
                fatal.append(f"{path.name}: missing (required)")
            continue
        try:
            frame = read_split(path)
        except DatasetError as exc:
            fatal.append(str(exc))
            continue
        header_error = header_problem(split, frame)
        if header_error:
            fatal.append(header_error)
            if "Filename" not in frame.columns:
                continue
        resolved = [clip_ids.resolve(f) if f else ("", None) for f in frame["Filename"]]
        part = pd.DataFrame({"split": split, "row": np.arange(len(frame)) + 2,
                             "Filename": [clip_id for clip_id, _ in resolved],
                             "id_problem": [problem for _, problem in resolved]})
        labelled = has_labels(frame)
        part["labelled"] = labelled
        if labelled:
            part[list(EMOTIONS)] = label_values(frame).to_numpy()
            for (s, r), cells in zip(zip(part["split"], part["row"]), frame[list(EMOTIONS)].to_dict("records")):
                raw_labels[(s, int(r))] = cells
        else:
            part[list(EMOTIONS)] = np.nan
        frames.append(part)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["split", "row", "Filename", "id_problem", "labelled", *EMOTIONS])
    table["Filename"] = table["Filename"].replace("", None)
    return table, raw_labels


def add_media_facts(table: pd.DataFrame, raw_dir: Path) -> pd.DataFrame:
    """The media facts of every listed id (each file probed once): exists, readable, duration, fps, size, audio."""
    ids = sorted({f for f in table["Filename"].dropna()})
    with ThreadPoolExecutor(PROBE_THREADS) as pool:
        infos = dict(zip(ids, pool.map(lambda i: probe(clip_path(raw_dir, i)), ids)))
    for col in ("exists", "readable", "error", "has_video", "has_audio", "duration_s", "fps", "n_frames",
                "width", "height", "audio_sample_rate"):
        table[col] = [getattr(infos[f], col) if f in infos else None for f in table["Filename"]]
    table["exists"] = table["exists"].fillna(False).astype(bool)
    misnamed = misnamed_clips(raw_dir, [i for i in ids if not infos[i].exists])
    table["misnamed_as"] = [misnamed.get(f) for f in table["Filename"]]  # e.g. 00012.MP4 for a missing 00012.mp4
    table["readable"] = table["readable"].fillna(False).astype(bool)
    table["duration_s"] = pd.to_numeric(table["duration_s"], errors="coerce")
    return table


def run_contract(table: pd.DataFrame, raw_labels: dict, params: DataParams) -> tuple[list[dict], list[Problem]]:
    """The Great Expectations suites over the rows (ids, files, durations) and the labelled rows (labels)."""
    import great_expectations as gx

    if not len(table):
        return [], []
    E = gx.expectations
    contract = [
        E.ExpectColumnValuesToNotBeNull(column="Filename"),
        E.ExpectColumnValuesToBeUnique(column="Filename"),
        E.ExpectColumnValuesToBeInSet(column="exists", value_set=[True]),
        E.ExpectColumnValuesToBeInSet(column="readable", value_set=[True]),
        E.ExpectColumnValuesToBeBetween(column="duration_s", min_value=params.min_duration_s),
    ]
    results = run_suite("raw_clips", table, contract, INDEX_COLUMNS)
    labelled = table[table["labelled"]].reset_index(drop=True)
    if len(labelled):
        label_contract = []
        for e in EMOTIONS:
            label_contract += [E.ExpectColumnValuesToNotBeNull(column=e),
                               E.ExpectColumnValuesToBeBetween(column=e, min_value=0.0, max_value=1.0)]
        results += run_suite("raw_labels", labelled, label_contract, INDEX_COLUMNS)
    return results, problems_from_results(results, table, raw_labels)


def validate_raw(raw_dir: Path, params: DataParams, report_dir: Path | None) -> ValidationReport:
    """Check a dataset folder in the Hume-Vidmimic2 layout; write the report; never raise on bad data."""
    raw_dir = Path(raw_dir)
    fatal: list[str] = []
    warnings: list[str] = []
    clip_ids = ClipIds(raw_dir)
    table, raw_labels = split_table(raw_dir, clip_ids, fatal)
    table = add_media_facts(table, raw_dir)
    results, problems = run_contract(table, raw_labels, params)

    listed = set(table["Filename"].dropna())
    clip_dir = raw_dir / CLIP_DIR
    orphans = [s for s in clip_ids.stems if s not in listed]
    if not clip_dir.is_dir():
        fatal.append(f"{clip_dir}: clip folder missing")
    long = table[table["duration_s"] > params.max_duration_s]
    if len(long):
        warnings.append(f"{len(long)} clip(s) longer than data.max_duration_s = {params.max_duration_s:g} s, "
                        "featurized on at most extract.max_steps steps spread over the clip: "
                        + ", ".join(f"{f} ({d:.0f} s)" for f, d in zip(long["Filename"][:20], long["duration_s"][:20])))
    if orphans:
        warnings.append(f"{len(orphans)} video file(s) in raw/ are not listed in any split: "
                        + ", ".join(orphans[:20]) + (" ..." if len(orphans) > 20 else ""))

    bad_rows = {(p.split, p.row) for p in problems}
    n_rows = len(table)
    fraction = len(bad_rows) / n_rows if n_rows else 1.0
    report = ValidationReport(
        stage="download", passed=not fatal and fraction <= params.max_error_fraction, n_rows=n_rows,
        n_bad_rows=len(bad_rows), error_fraction=round(fraction, 6), max_error_fraction=params.max_error_fraction,
        fatal=fatal, problems=problems, warnings=warnings, expectations=[expectation_row(r) for r in results],
        facts=raw_facts(table, orphans),
    )
    if report_dir is not None:
        write_report(report, Path(report_dir))
    return report


def problems_from_results(results: list[dict], table: pd.DataFrame,
                           raw_labels: dict[tuple[str, int], dict[str, str]]) -> list[Problem]:
    errors = {(s, r): e for s, r, e in zip(table["split"], table["row"], table["error"])}
    misnamed = {(s, r): m for s, r, m in zip(table["split"], table["row"], table["misnamed_as"])
                if isinstance(m, str)}
    ambiguous = {(s, int(r)): (f, p) for s, r, f, p in zip(table["split"], table["row"], table["Filename"],
                                                          table["id_problem"]) if isinstance(p, str)}
    problems = [Problem(s, r, f, "ambiguous_id", p) for (s, r), (f, p) in ambiguous.items()]
    for res in results:
        if res["success"]:
            continue
        kind = res["expectation_config"]["type"]
        column = res["expectation_config"]["kwargs"].get("column")
        for hit in res["result"].get("unexpected_index_list") or []:
            split, row, clip = hit.get("split"), int(hit["row"]), hit.get("Filename")
            if (split, row) in ambiguous and column in ("exists", "readable", "duration_s"):
                continue  # reported once, as the ambiguous id it is
            if column in EMOTIONS:
                check, detail = "label", label_detail(raw_labels.get((split, row), {}).get(column, ""), column)
            elif column == "Filename" and kind.endswith("unique"):
                check, detail = "duplicate_id", f"id {clip} is listed more than once"
            elif column == "Filename":
                check, detail = "missing_id", "Filename is empty"
            elif column == "exists":
                found = misnamed.get((split, row))
                check, detail = "missing_file", f"raw/{clip}.mp4 does not exist" + (
                    f" (raw/{found} is there: clip files are named <id>{CLIP_SUFFIX}, lower case)" if found else "")
            elif column == "readable":
                if not hit.get("exists", True) or errors.get((split, row)) == "file not found":
                    continue  # already reported as missing_file
                check, detail = "unreadable_file", f"raw/{clip}.mp4 unreadable: {errors.get((split, row))}"
            elif column == "duration_s":
                check, detail = "duration", (f"raw/{clip}.mp4 duration {hit.get('duration_s')} s is shorter than "
                                             "data.min_duration_s")
            else:
                check, detail = kind, f"{column} failed {kind}"
            problems.append(Problem(split, row, clip, check, detail))
    problems.sort(key=problem_order)
    return problems


def raw_facts(table: pd.DataFrame, orphans: list[str]) -> dict[str, Any]:
    ok = table[table["readable"]]
    dur = ok["duration_s"].dropna()
    return {
        "rows_per_split": {s: int((table["split"] == s).sum()) for s in SPLITS},
        "readable_clips": int(len(ok)),
        "clips_with_audio_track": int(ok["has_audio"].fillna(False).astype(bool).sum()),
        "clips_without_audio_track": int((~ok["has_audio"].fillna(False).astype(bool)).sum()),
        "duration_s": {"min": num(dur.min()), "median": num(dur.median()), "max": num(dur.max()),
                       "total": num(dur.sum())},
        "fps": sorted({round(float(f), 3) for f in ok["fps"].dropna()}),
        "resolutions": sorted({f"{int(w)}x{int(h)}" for w, h in zip(ok["width"], ok["height"]) if w and h}),
        "audio_sample_rates": sorted({int(r) for r in ok["audio_sample_rate"].dropna()}),
        "unlisted_files": len(orphans),
    }


