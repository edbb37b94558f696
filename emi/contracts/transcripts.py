"""The transcript contract (after ``transcribe``): one row per listed clip, statuses, log-probabilities, loops
(compression ratio), and WER against the generator's sentences where the dataset is the embedded one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emi.contracts.report import (Problem, ValidationReport, expectation_row, num, problem_order, run_suite,
                                  write_report)

TRANSCRIPT_STATUSES = ("ok", "empty", "no_audio", "silent", "error")
TRANSCRIPT_INDEX = ["split", "row", "id"]
WER_MATCH = 0.2  # a transcript at or below this WER "says the intended sentence"
LOOP_RATIO = 2.4  # whisper's (and faster-whisper's) default compression_ratio_threshold
WARNING_CHECKS = ("repetitive_text",)  # named problem rows that warn: not counted against the tolerance


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
                         report_dir: Path | None, reference: pd.DataFrame | None = None,
                         compression_ratio_threshold: float = LOOP_RATIO) -> ValidationReport:
    """Check the transcribe stage's table against the clip list; facts include WER against ``reference``.

    ``split_ids`` maps split -> ids in split-CSV order (line = position + 2); ``reference`` is the generator's
    ``latents.csv`` (columns ``id``, ``sentence``) when the dataset is synthetic. A recognised clip whose
    compression ratio is above ``compression_ratio_threshold`` is a named problem row that warns and does not
    count against the tolerance: the repetition guard has already decoded it again, and in real speech a
    repetitive transcript can be what was said (laughter, a chant), which no threshold tells from a loop.
    Never raises on bad data.
    """
    table, line_of, split_of = _indexed(table, split_ids)
    expected = [i for ids in split_ids.values() for i in ids]
    fatal: list[str] = []
    results: list[dict] = []
    if len(table):
        results = _run_contract(table, len(set(expected)), compression_ratio_threshold)
    else:
        fatal.append("the transcript table is empty")
    problems = _row_problems(results, table, split_of, compression_ratio_threshold)
    coverage, missed = _coverage_problems(table, expected, split_of, line_of)
    problems = sorted(problems + coverage, key=problem_order)
    if missed:
        fatal.append(missed)

    n_clips = len(set(expected)) or len(table)
    bad = {p.Filename for p in problems if p.check not in ("coverage", *WARNING_CHECKS)}
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
        warnings=_warnings(table, problems, compression_ratio_threshold),
        expectations=[expectation_row(r) for r in results],
        facts=_transcript_facts(table, split_ids, reference, compression_ratio_threshold),
    )
    if report_dir is not None:
        write_report(report, Path(report_dir))
    return report


def _indexed(table: pd.DataFrame, split_ids: dict[str, list[str]]) -> tuple[pd.DataFrame, dict, dict[str, str]]:
    """The table with each row's split-CSV line and numeric columns as numbers; (split, id) -> line; id -> split."""
    table = table.reset_index(drop=True).copy()
    table["id"] = table["id"].astype("string").astype(object)
    line_of = {(s, i): n + 2 for s, ids in split_ids.items() for n, i in enumerate(ids)}
    split_of: dict[str, str] = {}
    for s, ids in split_ids.items():
        for i in ids:
            split_of.setdefault(i, s)
    table["row"] = [line_of.get((s, i)) for s, i in zip(table["split"], table["id"])]
    for col in ("avg_logprob", "no_speech_prob", "compression_ratio", "duration_s"):
        table[col] = pd.to_numeric(table[col], errors="coerce") if col in table else np.nan
    return table, line_of, split_of


def _run_contract(table: pd.DataFrame, n_expected: int, threshold: float) -> list[dict]:
    import great_expectations as gx

    E = gx.expectations
    contract = [
        E.ExpectColumnValuesToNotBeNull(column="id"),
        E.ExpectColumnValuesToBeUnique(column="id"),
        E.ExpectTableRowCountToEqual(value=n_expected),
        E.ExpectColumnValuesToNotBeNull(column="text"),
        E.ExpectColumnValuesToBeInSet(column="status", value_set=list(TRANSCRIPT_STATUSES)),
        E.ExpectColumnValuesToNotBeInSet(column="status", value_set=["error"]),
    ]
    results = run_suite("transcripts", table, contract, TRANSCRIPT_INDEX)
    recognised = table[table["status"] == "ok"].reset_index(drop=True)
    if len(recognised):
        results += run_suite("transcripts_ok", recognised,
                             [E.ExpectColumnValuesToNotBeNull(column="avg_logprob"),
                              E.ExpectColumnValuesToBeBetween(column="avg_logprob", max_value=0.0),
                              E.ExpectColumnValuesToNotBeNull(column="compression_ratio"),
                              E.ExpectColumnValuesToBeBetween(column="compression_ratio", max_value=threshold)],
                             TRANSCRIPT_INDEX)
    return results


def _row_problems(results: list[dict], table: pd.DataFrame, split_of: dict[str, str],
                  threshold: float) -> list[Problem]:
    """A ``Problem`` per failing row of each column expectation (the row count is reported as coverage)."""
    detail_of = dict(zip(table["id"], table["detail"].fillna("")))
    text_of = dict(zip(table["id"], table["text"].fillna("").astype(str)))
    problems: list[Problem] = []
    for res in results:
        if res["success"]:
            continue
        kind = res["expectation_config"]["type"]
        column = res["expectation_config"]["kwargs"].get("column")
        if column is None:
            continue  # the row count: coverage is reported by _coverage_problems, id by id
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
            elif column == "compression_ratio" and kind.endswith("be_between"):
                text = text_of.get(clip, "")
                check, detail = "repetitive_text", (f"compression ratio {hit.get('compression_ratio')} > {threshold:g}"
                                                    f" (a decoding loop?): {text[:60]}{'…' if len(text) > 60 else ''}")
            elif column == "compression_ratio":
                check, detail = "compression_ratio", "a recognised clip without a compression ratio"
            else:
                check, detail = kind, f"{column} failed {kind}"
            problems.append(Problem(split, row, clip, check, detail))
    return problems


def _coverage_problems(table: pd.DataFrame, expected: list[str], split_of: dict[str, str],
                       line_of: dict) -> tuple[list[Problem], str]:
    """Ids the split files list without a row, rows no split lists, rows under the wrong split; and the fatal
    message when there is any."""
    present = set(table["id"].dropna())
    missing = [i for i in expected if i not in present]
    extra = sorted(present - set(expected))
    misfiled = [(i, s) for i, s in zip(table["id"], table["split"]) if i in split_of and split_of[i] != s]
    problems = [Problem(split_of[i], line_of.get((split_of[i], i)), i, "coverage", "no transcript row")
                for i in missing]
    problems += [Problem("?", None, i, "coverage", "transcript row for an id no split lists") for i in extra]
    problems += [Problem(s, None, i, "coverage", f"row says split {s!r}, the split files say {split_of[i]!r}")
                 for i, s in misfiled]
    fatal = (f"transcripts do not cover the split files: {len(missing)} id(s) missing, {len(extra)} unexpected, "
             f"{len(misfiled)} under the wrong split") if problems else ""
    return problems, fatal


def _warnings(table: pd.DataFrame, problems: list[Problem], threshold: float) -> list[str]:
    warnings: list[str] = []
    for status, what in (("no_audio", "have no audio track"), ("silent", "have a silent audio track"),
                         ("empty", "gave no recognised speech")):
        ids = table.loc[table["status"] == status, "id"].tolist()
        if ids:
            warnings.append(f"{len(ids)} clip(s) {what} (empty text): " + ", ".join(map(str, ids)))
    looped = [p.Filename for p in problems if p.check == "repetitive_text"]
    if looped:
        warnings.append(f"{len(looped)} clip(s) have a transcript with compression ratio > {threshold:g} after the "
                        f"repetition guard (problem rows, not counted against the tolerance): " + ", ".join(looped))
    return warnings


def _transcript_facts(table: pd.DataFrame, split_ids: dict[str, list[str]], reference: pd.DataFrame | None,
                      threshold: float) -> dict[str, Any]:
    text = table["text"].fillna("").astype(str)
    ok = table[table["status"] == "ok"]
    facts: dict[str, Any] = {
        "n_clips": int(len(table)),
        "rows_per_split": {s: int((table["split"] == s).sum()) for s in split_ids},
        "status_counts": {s: int((table["status"] == s).sum()) for s in TRANSCRIPT_STATUSES},
        "empty_text_rate": round(float((text.str.strip() == "").mean()), 4) if len(table) else None,
        "mean_words": round(float(text.str.split().str.len().mean()), 2) if len(table) else None,
        "avg_logprob_ok": {"mean": num(ok["avg_logprob"].mean()), "min": num(ok["avg_logprob"].min())},
        "compression_ratio_ok": {"max": num(ok["compression_ratio"].max()),
                                 "above_threshold": int((ok["compression_ratio"] > threshold).sum())},
        "repetition_guard_clips": int(table["detail"].fillna("").str.startswith("repetition guard").sum()),
        "audio_duration_s": {"min": num(table["duration_s"].min()), "max": num(table["duration_s"].max())},
    }
    if reference is not None and {"id", "sentence"} <= set(reference.columns):
        ref = dict(zip(reference["id"].astype(str), reference["sentence"].fillna("").astype(str)))
        scored = table[table["status"].isin(["ok", "empty"]) & table["id"].isin(list(ref))]
        refs = [ref[i] for i in scored["id"]]
        hyps = scored["text"].fillna("").astype(str).tolist()
        corpus, per_clip = word_error_rates(refs, hyps)
        facts["wer"] = num(corpus)
        facts["wer_clips"] = len(per_clip)
        facts["sentence_match_rate"] = (round(float(np.mean([w <= WER_MATCH for w in per_clip])), 4)
                                        if per_clip else None)
        keep = [(i, r, h) for i, r, h in zip(scored["id"], refs, hyps) if normalise_words(r)]
        worst = sorted(zip(per_clip, keep), key=lambda x: -x[0])[:5]
        facts["worst_wer"] = [{"id": i, "wer": round(w, 3), "sentence": r, "transcript": h}
                              for w, (i, r, h) in worst if w > 0]
    return facts
