"""Data contracts between stages, checked with Great Expectations (GX Core 1.x).

Each checkpoint turns GX results into row-level problems (split, CSV line, clip id, what is wrong),
writes ``reports/validation/<stage>.json`` and ``.md``, and decides pass/fail against a tolerance.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no phoning home; this runs offline
logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO chatter on import is not our report

import numpy as np
import pandas as pd

from emi.config import EMOTIONS, SPLIT_HEADER, RawValidationParams
from emi.media import probe
from emi.utils import write_json, write_text

SPLITS = ("train", "valid", "test")
REQUIRED_SPLITS = ("train", "valid")
INDEX_COLUMNS = ["split", "row", "Filename"]
PROBE_THREADS = 4


class DataValidationError(RuntimeError):
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


def _expectation_row(res: dict) -> dict[str, Any]:
    cfg = res["expectation_config"]
    kwargs = {k: v for k, v in cfg["kwargs"].items() if k != "batch_id"}
    return {"expectation": cfg["type"], "kwargs": kwargs, "success": res["success"],
            "unexpected_count": res["result"].get("unexpected_count", 0)}


# ----------------------------------------------------------------------------- raw data
def _read_split(path: Path) -> tuple[pd.DataFrame | None, str | None]:
    try:
        raw = path.read_bytes()
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"{path.name}: not UTF-8 text ({exc.reason} at byte {exc.start})"
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        return None, f"{path.name}: not a readable CSV: {str(exc).strip()}"
    frame.columns = [c.strip() for c in frame.columns]
    return frame, None


def _header_problem(split: str, frame: pd.DataFrame) -> str | None:
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


def _label_detail(raw: str, column: str) -> str:
    if raw == "":
        return f"{column} is empty"
    try:
        value = float(raw)
    except ValueError:
        return f"{column} is {raw!r}, not a number"
    if np.isnan(value):
        return f"{column} is NaN"
    return f"{column} = {value:g} is outside [0, 1]"


def validate_raw(raw_dir: Path, params: RawValidationParams, report_dir: Path | None) -> ValidationReport:
    """Check a dataset folder in the Hume-Vidmimic2 layout; write the report; never raise on bad data."""
    import great_expectations as gx

    raw_dir = Path(raw_dir)
    fatal: list[str] = []
    warnings: list[str] = []
    frames: list[pd.DataFrame] = []
    raw_labels: dict[tuple[str, int], dict[str, str]] = {}
    for split in SPLITS:
        path = raw_dir / f"{split}_split.csv"
        if not path.is_file():
            if split in REQUIRED_SPLITS:
                fatal.append(f"{path.name}: missing (required)")
            continue
        frame, error = _read_split(path)
        if error:
            fatal.append(error)
            continue
        header_error = _header_problem(split, frame)
        if header_error:
            fatal.append(header_error)
            if "Filename" not in frame.columns:
                continue
        part = pd.DataFrame({"split": split, "row": np.arange(len(frame)) + 2,
                             "Filename": frame["Filename"].str.strip()})
        has_labels = all(e in frame.columns for e in EMOTIONS)
        part["labelled"] = has_labels
        for e in EMOTIONS:
            values = frame[e].str.strip() if e in frame.columns else pd.Series([""] * len(frame))
            part[e] = pd.to_numeric(values, errors="coerce").to_numpy() if has_labels else np.nan
            if has_labels:
                for (s, r), v in zip(zip(part["split"], part["row"]), values):
                    raw_labels.setdefault((s, int(r)), {})[e] = v
        frames.append(part)

    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["split", "row", "Filename", "labelled", *EMOTIONS])
    table["Filename"] = table["Filename"].replace("", None)

    # media facts for every listed id (each file probed once)
    ids = sorted({f for f in table["Filename"].dropna()})
    with ThreadPoolExecutor(PROBE_THREADS) as pool:
        infos = dict(zip(ids, pool.map(lambda i: probe(raw_dir / "raw" / f"{i}.mp4"), ids)))
    for col in ("exists", "readable", "error", "has_video", "has_audio", "duration_s", "fps", "n_frames",
                "width", "height", "audio_sample_rate"):
        table[col] = [getattr(infos[f], col) if f in infos else None for f in table["Filename"]]
    table["exists"] = table["exists"].fillna(False).astype(bool)
    table["readable"] = table["readable"].fillna(False).astype(bool)
    table["duration_s"] = pd.to_numeric(table["duration_s"], errors="coerce")

    problems: list[Problem] = []
    results: list[dict] = []
    if len(table):
        E = gx.expectations
        contract = [
            E.ExpectColumnValuesToNotBeNull(column="Filename"),
            E.ExpectColumnValuesToBeUnique(column="Filename"),
            E.ExpectColumnValuesToBeInSet(column="exists", value_set=[True]),
            E.ExpectColumnValuesToBeInSet(column="readable", value_set=[True]),
            E.ExpectColumnValuesToBeBetween(column="duration_s", min_value=params.min_duration_s,
                                            max_value=params.max_duration_s),
        ]
        results += run_suite("raw_clips", table, contract, INDEX_COLUMNS)
        labelled = table[table["labelled"]].reset_index(drop=True)
        if len(labelled):
            label_contract = []
            for e in EMOTIONS:
                label_contract += [E.ExpectColumnValuesToNotBeNull(column=e),
                                   E.ExpectColumnValuesToBeBetween(column=e, min_value=0.0, max_value=1.0)]
            results += run_suite("raw_labels", labelled, label_contract, INDEX_COLUMNS)
        problems = _problems_from_results(results, table, raw_labels)

    listed = set(ids)
    clip_dir = raw_dir / "raw"
    orphans = sorted(p.stem for p in clip_dir.glob("*.mp4") if p.stem not in listed) if clip_dir.is_dir() else []
    if not clip_dir.is_dir():
        fatal.append(f"{clip_dir}: clip folder missing")
    if orphans:
        warnings.append(f"{len(orphans)} video file(s) in raw/ are not listed in any split: "
                        + ", ".join(orphans[:20]) + (" ..." if len(orphans) > 20 else ""))

    bad_rows = {(p.split, p.row) for p in problems}
    n_rows = len(table)
    fraction = len(bad_rows) / n_rows if n_rows else 1.0
    report = ValidationReport(
        stage="download",
        passed=not fatal and fraction <= params.max_error_fraction,
        n_rows=n_rows,
        n_bad_rows=len(bad_rows),
        error_fraction=round(fraction, 6),
        max_error_fraction=params.max_error_fraction,
        fatal=fatal,
        problems=problems,
        warnings=warnings,
        expectations=[_expectation_row(r) for r in results],
        facts=_raw_facts(table, orphans),
    )
    if report_dir is not None:
        write_report(report, Path(report_dir))
    return report


def _problems_from_results(results: list[dict], table: pd.DataFrame,
                           raw_labels: dict[tuple[str, int], dict[str, str]]) -> list[Problem]:
    errors = {(s, r): e for s, r, e in zip(table["split"], table["row"], table["error"])}
    problems = []
    for res in results:
        if res["success"]:
            continue
        kind = res["expectation_config"]["type"]
        column = res["expectation_config"]["kwargs"].get("column")
        for hit in res["result"].get("unexpected_index_list") or []:
            split, row, clip = hit.get("split"), int(hit["row"]), hit.get("Filename")
            if column in EMOTIONS:
                check, detail = "label", _label_detail(raw_labels.get((split, row), {}).get(column, ""), column)
            elif column == "Filename" and kind.endswith("unique"):
                check, detail = "duplicate_id", f"id {clip} is listed more than once"
            elif column == "Filename":
                check, detail = "missing_id", "Filename is empty"
            elif column == "exists":
                check, detail = "missing_file", f"raw/{clip}.mp4 does not exist"
            elif column == "readable":
                if not hit.get("exists", True) or errors.get((split, row)) == "file not found":
                    continue  # already reported as missing_file
                check, detail = "unreadable_file", f"raw/{clip}.mp4 unreadable: {errors.get((split, row))}"
            elif column == "duration_s":
                check, detail = "duration", f"raw/{clip}.mp4 duration {hit.get('duration_s')} s is out of range"
            else:
                check, detail = kind, f"{column} failed {kind}"
            problems.append(Problem(split, row, clip, check, detail))
    problems.sort(key=lambda p: (SPLITS.index(p.split) if p.split in SPLITS else 9, p.row or 0, p.check))
    return problems


def _raw_facts(table: pd.DataFrame, orphans: list[str]) -> dict[str, Any]:
    ok = table[table["readable"]]
    dur = ok["duration_s"].dropna()
    return {
        "rows_per_split": {s: int((table["split"] == s).sum()) for s in SPLITS},
        "readable_clips": int(len(ok)),
        "clips_with_audio_track": int(ok["has_audio"].fillna(False).astype(bool).sum()),
        "clips_without_audio_track": int((~ok["has_audio"].fillna(False).astype(bool)).sum()),
        "duration_s": {"min": _num(dur.min()), "median": _num(dur.median()), "max": _num(dur.max()),
                       "total": _num(dur.sum())},
        "fps": sorted({round(float(f), 3) for f in ok["fps"].dropna()}),
        "resolutions": sorted({f"{int(w)}x{int(h)}" for w, h in zip(ok["width"], ok["height"]) if w and h}),
        "audio_sample_rates": sorted({int(r) for r in ok["audio_sample_rate"].dropna()}),
        "unlisted_files": len(orphans),
    }


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else round(float(x), 4)


# ----------------------------------------------------------------------------- reports
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
        lines += ["", "## Problems by row", "", "| split | line | id | check | problem |", "|---|---|---|---|---|"]
        lines += [f"| {p.split} | {p.row} | {p.Filename} | {p.check} | {p.detail} |" for p in report.problems]
    if report.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report.warnings]
    lines += ["", "## Expectations (Great Expectations)", "", "| expectation | arguments | ok | failing rows |",
              "|---|---|---|---|"]
    for e in report.expectations:
        args = ", ".join(f"{k}={v}" for k, v in e["kwargs"].items())
        lines.append(f"| {e['expectation']} | {args} | {'yes' if e['success'] else 'no'} | {e['unexpected_count']} |")
    lines += ["", "## Facts", ""] + [f"- {k}: {v}" for k, v in report.facts.items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- transcripts
TRANSCRIPT_STATUSES = ("ok", "empty", "no_audio", "silent", "error")
TRANSCRIPT_INDEX = ["split", "row", "id"]
WER_MATCH = 0.2  # a transcript at or below this WER "says the intended sentence"


def normalise_words(text: str) -> str:
    """Lowercase, punctuation removed, whitespace collapsed: what WER should compare."""
    import re

    return " ".join(re.sub(r"[^\w\s']|_", " ", str(text).lower()).replace("'", "").split())


def word_error_rates(references: list[str], hypotheses: list[str]) -> tuple[float, list[float]]:
    """Corpus WER (total edits / total reference words) and each pair's own WER, on normalised words."""
    import jiwer

    pairs = [(normalise_words(r), normalise_words(h)) for r, h in zip(references, hypotheses)]
    pairs = [(r, h) for r, h in pairs if r]  # an empty reference has no defined WER
    if not pairs:
        return float("nan"), []
    out = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
    n_ref = sum(len(r.split()) for r, _ in pairs)
    corpus = (out.substitutions + out.deletions + out.insertions) / n_ref
    per_clip = [jiwer.wer(r, h) for r, h in pairs]
    return float(corpus), [float(w) for w in per_clip]


def validate_transcripts(table: pd.DataFrame, split_ids: dict[str, list[str]], params_tolerance: float,
                         report_dir: Path | None, reference: pd.DataFrame | None = None) -> ValidationReport:
    """Check the transcribe stage's table against the clip list; facts include WER against ``reference``.

    ``split_ids`` maps split -> ids in split-CSV order (line = position + 2); ``reference`` is the generator's
    ``latents.csv`` (columns ``id``, ``sentence``) when the dataset is synthetic. Never raises on bad data.
    """
    import great_expectations as gx

    E = gx.expectations
    table = table.reset_index(drop=True).copy()
    table["id"] = table["id"].astype("string").astype(object)
    line_of = {(s, i): n + 2 for s, ids in split_ids.items() for n, i in enumerate(ids)}
    split_of: dict[str, str] = {}
    for s, ids in split_ids.items():
        for i in ids:
            split_of.setdefault(i, s)
    table["row"] = [line_of.get((s, i)) for s, i in zip(table["split"], table["id"])]
    for col in ("avg_logprob", "no_speech_prob", "duration_s"):
        table[col] = pd.to_numeric(table[col], errors="coerce")

    fatal: list[str] = []
    problems: list[Problem] = []
    results: list[dict] = []
    expected = [i for ids in split_ids.values() for i in ids]
    if len(table):
        contract = [
            E.ExpectColumnValuesToNotBeNull(column="id"),
            E.ExpectColumnValuesToBeUnique(column="id"),
            E.ExpectTableRowCountToEqual(value=len(set(expected))),
            E.ExpectColumnValuesToNotBeNull(column="text"),
            E.ExpectColumnValuesToBeInSet(column="status", value_set=list(TRANSCRIPT_STATUSES)),
            E.ExpectColumnValuesToNotBeInSet(column="status", value_set=["error"]),
        ]
        results += run_suite("transcripts", table, contract, TRANSCRIPT_INDEX)
        recognised = table[table["status"] == "ok"].reset_index(drop=True)
        if len(recognised):
            results += run_suite("transcripts_ok", recognised,
                                 [E.ExpectColumnValuesToNotBeNull(column="avg_logprob"),
                                  E.ExpectColumnValuesToBeBetween(column="avg_logprob", max_value=0.0)],
                                 TRANSCRIPT_INDEX)
    else:
        fatal.append("the transcript table is empty")

    detail_of = dict(zip(table["id"], table["detail"].fillna("")))
    for res in results:
        if res["success"]:
            continue
        kind = res["expectation_config"]["type"]
        column = res["expectation_config"]["kwargs"].get("column")
        if column is None:
            continue  # the row count: coverage is reported below, id by id
        for hit in res["result"].get("unexpected_index_list") or []:
            clip = hit.get("id")
            split = hit.get("split") or split_of.get(clip, "?")
            row = int(hit["row"]) if hit.get("row") is not None and not pd.isna(hit.get("row")) else None
            if column == "status" and kind.endswith("not_be_in_set"):
                check, detail = "unreadable_clip", detail_of.get(clip) or f"raw/{clip}.mp4: error"
            elif column == "status":
                check, detail = "status", f"status {hit.get('status')!r} not in {list(TRANSCRIPT_STATUSES)}"
            elif column == "id" and kind.endswith("unique"):
                check, detail = "duplicate_id", f"id {clip} has more than one transcript row"
            elif column == "id":
                check, detail = "missing_id", "transcript row without an id"
            elif column == "text":
                check, detail = "text_null", "text is null (an unrecognised clip has an empty string)"
            elif column == "avg_logprob":
                check, detail = "avg_logprob", f"avg_logprob {hit.get('avg_logprob')} is not a log-probability ≤ 0"
            else:
                check, detail = kind, f"{column} failed {kind}"
            problems.append(Problem(split, row, clip, check, detail))

    present = set(table["id"].dropna())
    missing = [i for i in expected if i not in present]
    extra = sorted(present - set(expected))
    misfiled = [(i, s) for i, s in zip(table["id"], table["split"]) if i in split_of and split_of[i] != s]
    for i in missing:
        problems.append(Problem(split_of[i], line_of.get((split_of[i], i)), i, "coverage", "no transcript row"))
    for i in extra:
        problems.append(Problem("?", None, i, "coverage", "transcript row for an id no split lists"))
    for i, s in misfiled:
        problems.append(Problem(s, None, i, "coverage", f"row says split {s!r}, the split files say {split_of[i]!r}"))
    if missing or extra or misfiled:
        fatal.append(f"transcripts do not cover the split files: {len(missing)} id(s) missing, "
                     f"{len(extra)} unexpected, {len(misfiled)} under the wrong split")
    problems.sort(key=lambda p: (SPLITS.index(p.split) if p.split in SPLITS else 9, p.row or 0, p.check))

    warnings: list[str] = []
    for status, what in (("no_audio", "have no audio track"), ("silent", "have a silent audio track"),
                         ("empty", "gave no recognised speech")):
        ids = table.loc[table["status"] == status, "id"].tolist()
        if ids:
            warnings.append(f"{len(ids)} clip(s) {what} (empty text): " + ", ".join(map(str, ids)))

    n_clips = len(set(expected)) or len(table)
    bad = {p.Filename for p in problems if p.check != "coverage"}
    fraction = len(bad) / n_clips if n_clips else 1.0
    report = ValidationReport(
        stage="transcribe",
        passed=not fatal and fraction <= params_tolerance,
        n_rows=len(table),
        n_bad_rows=len(bad),
        error_fraction=round(fraction, 6),
        max_error_fraction=params_tolerance,
        fatal=fatal,
        problems=problems,
        warnings=warnings,
        expectations=[_expectation_row(r) for r in results],
        facts=_transcript_facts(table, split_ids, reference),
    )
    if report_dir is not None:
        write_report(report, Path(report_dir))
    return report


def _transcript_facts(table: pd.DataFrame, split_ids: dict[str, list[str]],
                      reference: pd.DataFrame | None) -> dict[str, Any]:
    text = table["text"].fillna("").astype(str)
    ok = table[table["status"] == "ok"]
    facts: dict[str, Any] = {
        "n_clips": int(len(table)),
        "rows_per_split": {s: int((table["split"] == s).sum()) for s in split_ids},
        "status_counts": {s: int((table["status"] == s).sum()) for s in TRANSCRIPT_STATUSES},
        "empty_text_rate": round(float((text.str.strip() == "").mean()), 4) if len(table) else None,
        "mean_words": round(float(text.str.split().str.len().mean()), 2) if len(table) else None,
        "avg_logprob_ok": {"mean": _num(ok["avg_logprob"].mean()), "min": _num(ok["avg_logprob"].min())},
        "audio_duration_s": {"min": _num(table["duration_s"].min()), "max": _num(table["duration_s"].max())},
    }
    if reference is not None and {"id", "sentence"} <= set(reference.columns):
        ref = dict(zip(reference["id"].astype(str), reference["sentence"].fillna("").astype(str)))
        scored = table[table["status"].isin(["ok", "empty"]) & table["id"].isin(list(ref))]
        refs = [ref[i] for i in scored["id"]]
        hyps = scored["text"].fillna("").astype(str).tolist()
        corpus, per_clip = word_error_rates(refs, hyps)
        facts["wer"] = _num(corpus)
        facts["wer_clips"] = len(per_clip)
        facts["sentence_match_rate"] = (round(float(np.mean([w <= WER_MATCH for w in per_clip])), 4)
                                        if per_clip else None)
        keep = [(i, r, h) for i, r, h in zip(scored["id"], refs, hyps) if normalise_words(r)]
        worst = sorted(zip(per_clip, keep), key=lambda x: -x[0])[:5]
        facts["worst_wer"] = [{"id": i, "wer": round(w, 3), "sentence": r, "transcript": h}
                              for w, (i, r, h) in worst if w > 0]
    return facts
