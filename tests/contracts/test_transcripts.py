"""The transcript contract (after ``transcribe``): coverage, ids, statuses, log-probabilities, loops, WER."""

import pandas as pd
import pytest
from faster_whisper.transcribe import get_compression_ratio

from emi.contracts.report import DataValidationError
from emi.contracts.transcripts import normalise_words, validate_transcripts, word_error_rates
from emi.data.dataset import DatasetError

ROW = {"text": "hi", "language": "en", "avg_logprob": -0.3, "no_speech_prob": 0.1, "compression_ratio": 0.9,
       "duration_s": 3.0, "status": "ok", "detail": ""}
LOOP = ", ".join(["No"] + ["no"] * 112)  # what whisper tiny.en made of clip 00241 of the old embedded data (before fe77d35)


def test_validation_names_missing_and_duplicate_ids(tmp_path):
    table = pd.DataFrame([{"id": "1", "split": "train", **ROW}, {"id": "1", "split": "train", **ROW},
                          {"id": "3", "split": "valid", **ROW, "avg_logprob": 0.5}])
    report = validate_transcripts(table, {"train": ["1", "2"], "valid": ["3"]}, 1.0, tmp_path)
    assert not report.passed and report.fatal
    found = {(p.Filename, p.check) for p in report.problems}
    assert {("1", "duplicate_id"), ("2", "coverage"), ("3", "avg_logprob")} <= found
    assert (tmp_path / "transcribe.md").is_file()


def test_unreadable_clip_counts_against_the_tolerance_and_raises_as_a_dataset_error():
    table = pd.DataFrame([{"id": "1", "split": "train", **ROW},
                          {"id": "2", "split": "train", **ROW, "text": "", "status": "error", "avg_logprob": None,
                           "detail": "raw/2.mp4: cannot decode audio"},
                          {"id": "3", "split": "train", **ROW, "text": "", "status": "no_audio", "avg_logprob": None}])
    ids = {"train": ["1", "2", "3"]}
    strict = validate_transcripts(table, ids, 0.0, None)
    assert not strict.passed and [(p.Filename, p.check) for p in strict.problems] == [("2", "unreadable_clip")]
    assert any("3" in w and "no audio track" in w for w in strict.warnings), "no audio is a warning, not an error"
    with pytest.raises(DataValidationError, match=r"\(id 2\): raw/2.mp4: cannot decode audio") as err:
        strict.raise_if_failed()
    assert isinstance(err.value, DatasetError)
    assert validate_transcripts(table, ids, 0.5, None).passed


def test_wer_against_the_generators_sentences():
    reference = pd.DataFrame({"id": ["1", "2"], "sentence": ["I am so happy today.", "That hurts."]})
    table = pd.DataFrame([{"id": "1", "split": "train", **ROW, "text": "i am so happy today"},
                          {"id": "2", "split": "train", **ROW, "text": "that hurt"}])
    facts = validate_transcripts(table, {"train": ["1", "2"]}, 1.0, None, reference=reference).facts
    assert facts["wer"] == pytest.approx(1 / 7, abs=1e-3) and facts["wer_clips"] == 2
    assert facts["sentence_match_rate"] == 0.5
    assert facts["worst_wer"][0]["id"] == "2"


def test_words_are_normalised_before_wer():
    assert normalise_words("Don't STOP,  now!") == "dont stop now"
    corpus, per_clip = word_error_rates(["a b c d", "", "x y"], ["a b c d", "anything", "x z"])
    assert per_clip == [0.0, 0.5], "an empty reference has no WER and is left out"
    assert corpus == pytest.approx(1 / 6)


def test_a_looping_transcript_is_a_named_problem_row_that_warns():
    ratio = round(get_compression_ratio(LOOP), 4)
    assert ratio > 20
    table = pd.DataFrame([{"id": "1", "split": "train", **ROW},
                          {"id": "2", "split": "train", **ROW, "text": LOOP, "compression_ratio": ratio},
                          {"id": "3", "split": "valid", **ROW, "text": "Ha, ha, ha.", "compression_ratio": 2.4},
                          {"id": "4", "split": "valid", **ROW, "text": "", "status": "empty",
                           "compression_ratio": None, "detail": "no speech recognised"}])
    ids = {"train": ["1", "2"], "valid": ["3", "4"]}
    report = validate_transcripts(table, ids, 0.0, None)
    assert report.passed and report.n_bad_rows == 0, "a loop warns: it does not count against the tolerance"
    assert [(p.split, p.row, p.Filename, p.check) for p in report.problems] == [("train", 3, "2", "repetitive_text")]
    assert f"compression ratio {ratio} > 2.4" in report.problems[0].detail and "No, no, no" in report.problems[0].detail
    assert any("compression ratio > 2.4" in w and w.endswith(": 2") for w in report.warnings)
    assert report.facts["compression_ratio_ok"] == {"max": ratio, "above_threshold": 1}
    assert {e["expectation"]: e["unexpected_count"] for e in report.expectations
            if e["kwargs"].get("column") == "compression_ratio"} == {"expect_column_values_to_not_be_null": 0,
                                                                     "expect_column_values_to_be_between": 1}

    stricter = validate_transcripts(table, ids, 0.0, None, compression_ratio_threshold=2.0)
    assert [p.Filename for p in stricter.problems] == ["2", "3"] and stricter.passed


def test_a_recognised_clip_without_a_compression_ratio_is_an_error_row():
    table = pd.DataFrame([{"id": "1", "split": "train", **ROW, "compression_ratio": None}])
    report = validate_transcripts(table, {"train": ["1"]}, 0.0, None)
    assert not report.passed and [(p.Filename, p.check) for p in report.problems] == [("1", "compression_ratio")]
