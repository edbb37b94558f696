"""The raw-data contract (after ``download``): split files, header, labels, ids, readable clips."""

from pathlib import Path

import pytest

from emi.config import DataParams
from emi.contracts.raw import validate_raw

TOLERANT = DataParams(max_error_fraction=1.0, min_duration_s=0.2, max_duration_s=600, silence_dbfs=-60)
STRICT = DataParams(max_error_fraction=0.0, min_duration_s=0.2, max_duration_s=600, silence_dbfs=-60)


def edit_lines(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")


def test_clean_dataset_passes_and_writes_reports(tiny_dataset, tmp_path):
    report = validate_raw(tiny_dataset, STRICT, tmp_path / "reports")
    assert report.passed and report.problems == [] and report.fatal == []
    assert report.n_rows == 12
    assert (tmp_path / "reports" / "download.json").is_file()
    assert "PASSED" in (tmp_path / "reports" / "download.md").read_text()
    assert report.facts["fps"] == [25.0]
    assert report.facts["clips_with_audio_track"] == 12


def test_every_bad_row_is_named(dataset_copy, tmp_path):
    root = dataset_copy
    train = root / "train_split.csv"
    rows = train.read_text().splitlines()
    ids = [r.split(",")[0] for r in rows[1:]]
    # line 2: NaN label; line 3: label > 1; line 4: not a number; line 5: duplicate of line 6's id
    def edit(lines):
        lines[1] = ",".join([ids[0], "nan"] + lines[1].split(",")[2:])
        lines[2] = ",".join(lines[2].split(",")[:6] + ["1.7"])
        lines[3] = ",".join([ids[2], "high"] + lines[3].split(",")[2:])
        lines[4] = ",".join([ids[4]] + lines[4].split(",")[1:])
    edit_lines(train, edit)
    # a corrupt clip (truncated), a missing file and one named .MP4 (this layout reads <id>.mp4), all listed in valid
    valid_ids = [r.split(",")[0] for r in (root / "valid_split.csv").read_text().splitlines()[1:]]
    corrupt = root / "raw" / f"{valid_ids[0]}.mp4"
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 3])
    (root / "raw" / f"{valid_ids[1]}.mp4").unlink()
    (root / "raw" / f"{valid_ids[2]}.mp4").rename(root / "raw" / f"{valid_ids[2]}.MP4")

    report = validate_raw(root, STRICT, tmp_path / "reports")
    assert not report.passed
    found = {(p.split, p.row, p.check) for p in report.problems}
    assert ("train", 2, "label") in found
    assert ("train", 3, "label") in found
    assert ("train", 4, "label") in found
    assert ("train", 5, "duplicate_id") in found and ("train", 6, "duplicate_id") in found
    assert ("valid", 2, "unreadable_file") in found
    assert ("valid", 3, "missing_file") in found and ("valid", 4, "missing_file") in found
    details = "\n".join(p.detail for p in report.problems)
    assert "Admiration is NaN" in details
    assert "Joy = 1.7 is outside [0, 1]" in details
    assert "Admiration is 'high', not a number" in details
    detail = {(p.split, p.row): p.detail for p in report.problems}
    assert detail["valid", 3] == f"raw/{valid_ids[1]}.mp4 does not exist"
    assert detail["valid", 4] == (f"raw/{valid_ids[2]}.mp4 does not exist (raw/{valid_ids[2]}.MP4 is there: clip "
                                  "files are named <id>.mp4, lower case)")
    # the missing file is reported once, not also as unreadable
    assert sum(p.row in (3, 4) and p.split == "valid" for p in report.problems) == 2
    assert report.n_bad_rows == 8 and report.error_fraction == pytest.approx(8 / 12, abs=1e-4)
    md = (tmp_path / "reports" / "download.md").read_text()
    assert "FAILED" in md and "| train | 4 |" in md
    # the same data passes under a tolerance above its error fraction
    assert validate_raw(root, TOLERANT, None).passed


def test_wrong_header_and_delimiter_are_fatal(dataset_copy):
    train = dataset_copy / "train_split.csv"
    edit_lines(train, lambda lines: lines.__setitem__(0, lines[0].replace("Joy", "Happiness")))
    (dataset_copy / "valid_split.csv").write_text(
        (dataset_copy / "valid_split.csv").read_text().replace(",", ";"))
    report = validate_raw(dataset_copy, TOLERANT, None)
    assert not report.passed
    fatal = "\n".join(report.fatal)
    assert "train_split.csv: header" in fatal and "missing ['Joy']" in fatal and "unexpected ['Happiness']" in fatal
    assert "valid_split.csv" in fatal and "not comma-delimited" in fatal


def test_non_utf8_and_missing_split_are_fatal(dataset_copy):
    (dataset_copy / "train_split.csv").write_bytes("Filename,Admiration\n\xff\xfe".encode("latin-1"))
    (dataset_copy / "valid_split.csv").unlink()
    report = validate_raw(dataset_copy, TOLERANT, None)
    fatal = "\n".join(report.fatal)
    assert "train_split.csv: not UTF-8" in fatal
    assert "valid_split.csv: missing (required)" in fatal


def test_test_split_without_labels_is_accepted_and_orphans_warned(dataset_copy):
    test = dataset_copy / "test_split.csv"
    ids = [r.split(",")[0] for r in test.read_text().splitlines()[1:]]
    test.write_text("Filename\n" + "\n".join(ids[:-1]) + "\n")  # last test clip now unlisted
    report = validate_raw(dataset_copy, STRICT, None)
    assert report.passed, report.summary()
    assert any(ids[-1] in w for w in report.warnings)


def test_too_short_clips_are_problems_and_long_clips_are_flagged_not_refused(tiny_dataset):
    long_min = STRICT.model_copy(update={"min_duration_s": 10.0, "max_duration_s": 20.0})
    report = validate_raw(tiny_dataset, long_min, None)
    assert not report.passed
    assert {p.check for p in report.problems} == {"duration"} and report.n_bad_rows == 12
    assert "shorter than data.min_duration_s" in report.problems[0].detail
    # a clip longer than max_duration_s is processed (on extract.max_steps steps): a warning, not a problem row
    short_max = STRICT.model_copy(update={"min_duration_s": 0.2, "max_duration_s": 1.0})
    report = validate_raw(tiny_dataset, short_max, None)
    assert report.passed and report.n_bad_rows == 0
    assert any("12 clip(s) longer than data.max_duration_s = 1 s" in w for w in report.warnings), report.warnings


def test_an_ambiguous_unpadded_id_is_one_named_problem_row(dataset_copy):
    import shutil

    train = dataset_copy / "train_split.csv"
    ids = [r.split(",")[0] for r in train.read_text().splitlines()[1:]]
    number = str(int(ids[0]))
    shutil.copy2(dataset_copy / "raw" / f"{ids[0]}.mp4", dataset_copy / "raw" / f"0{number}.mp4")
    edit_lines(train, lambda lines: lines.__setitem__(1, ",".join([number] + lines[1].split(",")[1:])))
    edit_lines(train, lambda lines: lines.__setitem__(2, ",".join([str(int(ids[1]))] + lines[2].split(",")[1:])))
    report = validate_raw(dataset_copy, STRICT, None)
    assert not report.passed and report.n_bad_rows == 1, report.problems
    (problem,) = report.problems
    assert (problem.split, problem.row, problem.check) == ("train", 2, "ambiguous_id")
    assert problem.detail == f"id {number} is ambiguous: it matches raw/{ids[0]}.mp4, raw/0{number}.mp4"
    # the unpadded id of line 3 matched its file; the extra copy is an unlisted clip
    assert any(f"0{number}" in w for w in report.warnings)
