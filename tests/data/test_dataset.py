"""The dataset layer: split files (parsing rules, ids, clip order), labels and the transcript table."""

from pathlib import Path

import pandas as pd
import pytest

from emi.config import EMOTIONS, SPLIT_HEADER
from emi.data.dataset import (ClipIds, DatasetError, clip_path, clip_stems, list_clips, read_labels, read_split,
                              read_transcripts, split_ids, split_path, transcript_texts, unlisted_ids)

HEADER = ",".join(SPLIT_HEADER)


def write_splits(root: Path, **rows: list[str]) -> Path:
    """Split CSVs under ``root`` from raw text lines (after the header)."""
    root.mkdir(parents=True, exist_ok=True)
    for split, lines in rows.items():
        split_path(root, split).write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")
    return root


def labels(*values: float) -> str:
    return ",".join(str(v) for v in values)


def test_whitespace_in_header_and_cells_is_stripped(tmp_path):
    path = tmp_path / "train_split.csv"
    path.write_text(" Filename , Admiration ,Amusement\n 00007 , 0.5 ,  0.25\n00008,0.1,0.2\n")
    frame = read_split(path)
    assert list(frame.columns) == ["Filename", "Admiration", "Amusement"]
    assert frame["Filename"].tolist() == ["00007", "00008"]
    assert frame.loc[0, "Admiration"] == "0.5" and frame.loc[0, "Amusement"] == "0.25"


def test_cells_are_read_as_text(tmp_path):
    path = tmp_path / "train_split.csv"
    path.write_text("Filename,Joy\n00012,NA\n007,\n")
    frame = read_split(path)
    assert frame["Filename"].tolist() == ["00012", "007"], "leading zeros of ids must survive"
    assert frame["Joy"].tolist() == ["NA", ""], "no NaN guessing: cells stay text"


def test_non_utf8_split_error_names_the_file(tmp_path):
    path = tmp_path / "valid_split.csv"
    path.write_bytes("Filename,Joy\n\xff\xfe,0.5\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"valid_split\.csv: not UTF-8"):
        read_split(path)


def test_split_ids_is_a_csv_id_list_per_split(tmp_path):
    root = write_splits(tmp_path / "d", train=["00002," + labels(*[0.1] * 6), "00001," + labels(*[0.2] * 6), ","],
                        valid=["00003," + labels(*[0.3] * 6)])
    split_path(root, "test").write_text("Filename\n00005\n00004\n")
    assert split_ids(root) == {"train": ["00002", "00001"], "valid": ["00003"], "test": ["00005", "00004"]}
    with pytest.raises(DatasetError, match="no train/valid/test split CSV"):
        split_ids(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    split_path(bad, "train").write_text("Clip,Joy\n1,0.5\n")
    with pytest.raises(DatasetError, match="no Filename column"):
        split_ids(bad)


def test_list_clips_orders_by_split_then_id_and_keeps_a_repeat_once(tmp_path):
    row = labels(*[0.5] * 6)
    root = write_splits(tmp_path / "d", train=[f"00010,{row}", f"00002,{row}", f"b,{row}"],
                        valid=[f"00001,{row}", f"00002,{row}"])
    clips = list_clips(root)
    assert [(c.split, c.id) for c in clips] == [("train", "00002"), ("train", "00010"), ("train", "b"),
                                                ("valid", "00001")]
    assert clips[0].path == clip_path(root, "00002") == root / "raw" / "00002.mp4"


def test_read_labels_leaves_out_unusable_rows(tmp_path):
    root = write_splits(tmp_path / "d",
                        train=["00001," + labels(0.1, 0.2, 0.3, 0.4, 0.5, 0.6), "00002," + labels(0.1, "nan", 0, 0, 0, 0),
                               "00003," + labels(0.1, 1.7, 0, 0, 0, 0), "00004,high,0,0,0,0,0"],
                        valid=["00005," + labels(*[0.0] * 6), "00001," + labels(*[0.9] * 6)])
    split_path(root, "test").write_text("Filename\n00006\n")  # unlabelled test split: no labels, no error
    got = read_labels(root)
    assert list(got.columns) == list(EMOTIONS)
    assert got.index.tolist() == ["00001", "00005"], "NaN, out-of-range, non-numeric and repeated rows must go"
    assert got.loc["00001"].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), "the first row of a repeat"


def test_transcripts_table_reads_as_written_and_gives_usable_texts(tmp_path):
    path = tmp_path / "transcripts.csv"
    pd.DataFrame({"id": ["00001", "00002", "00003", "00004"], "split": "train",
                  "text": ["hello there", "", "  ", "kept?"], "language": "en",
                  "avg_logprob": [-0.2, None, -0.1, -0.3], "no_speech_prob": 0.1, "compression_ratio": 1.2, "duration_s": 3.0,
                  "status": ["ok", "no_audio", "ok", "error"], "detail": ""}).to_csv(path, index=False)
    table = read_transcripts(path)
    assert table["id"].tolist() == ["00001", "00002", "00003", "00004"]
    assert table.loc[1, "text"] == "" and pd.isna(table.loc[1, "avg_logprob"])
    assert table["avg_logprob"].dtype == float
    assert transcript_texts(path) == {"00001": "hello there", "00002": None, "00003": None, "00004": None}
    pd.DataFrame({"id": ["1"], "text": ["x"]}).to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(DatasetError, match=r"short\.csv.*lacks column\(s\) status"):
        transcript_texts(tmp_path / "short.csv")


def touch_clips(root: Path, *stems: str) -> None:
    (root / "raw").mkdir(parents=True, exist_ok=True)
    for stem in stems:
        (root / "raw" / f"{stem}.mp4").write_bytes(b"")


def test_unpadded_csv_ids_match_zero_padded_files(tmp_path):
    root = write_splits(tmp_path / "ds", train=[f"12,{labels(*[0.5] * 6)}", f"00013,{labels(*[0.25] * 6)}"],
                        valid=[f"7.mp4,{labels(*[0.0] * 6)}"])
    touch_clips(root, "00012", "00013", "00007", "00020", "readme")
    (root / "raw" / "Thumbs.db").write_bytes(b"x")
    assert clip_stems(root) == ["00007", "00012", "00013", "00020", "readme"]
    assert split_ids(root) == {"train": ["00012", "00013"], "valid": ["00007"]}
    assert [c.path for c in list_clips(root)][0] == root / "raw" / "00012.mp4"
    assert read_labels(root).index.tolist() == ["00012", "00013", "00007"]
    assert unlisted_ids(root) == ["00020", "readme"]


def test_an_exact_name_wins_and_two_padded_matches_are_ambiguous(tmp_path):
    touch_clips(tmp_path, "12", "00012", "013", "0013")
    ids = ClipIds(tmp_path)
    assert ids.resolve("12") == ("12", None)
    assert ids.resolve("0012")[1] == "id 0012 is ambiguous: it matches raw/00012.mp4, raw/12.mp4"
    assert ids.resolve("00012") == ("00012", None)
    clip, problem = ids.resolve("13")
    assert clip == "13" and problem == "id 13 is ambiguous: it matches raw/0013.mp4, raw/013.mp4"
    assert ids.resolve("14") == ("14", None)  # no file: reported where files are checked
    assert ids.resolve("abc") == ("abc", None)
