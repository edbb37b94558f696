"""The feature contract (after ``extract``): statuses, dims, lengths, finiteness, coverage; it reports, never raises."""

from pathlib import Path

import numpy as np
import pytest

from emi.config import MODALITIES
from emi.contracts.features import feature_table, validate_features
from emi.contracts.report import DataValidationError
from emi.data.dataset import Clip
from emi.features.store import INDEX_FILE, MANIFEST_FILE, ShardSet, pack, save_shard, shard_path
from emi.utils import write_json, write_text

DIMS = {"visual": 4, "audio": 3, "text": 2}


def write_store(out: Path, clips: list[tuple[str, str, str]], audio_steps: dict[str, int] | None = None,
                text_dim: int = DIMS["text"], nan_in: str | None = None) -> Path:
    """One shard of clips (id, visual status, audio status), 3 steps each, written as extract writes it."""
    audio_steps = audio_steps or {}
    ids = [c[0] for c in clips]
    bad = [c[1] == "error" for c in clips]
    v = [np.zeros((0 if e else 3, DIMS["visual"]), np.float32) for e in bad]
    a = [np.zeros((0 if e else audio_steps.get(i, 3), DIMS["audio"]), np.float32) for i, e in zip(ids, bad)]
    t = [np.full((1, text_dim), np.nan if i == nan_in else 0.5, np.float32) for i in ids]
    detail = ["cannot decode" if e else "" for e in bad]
    statuses = {"visual": [c[1] for c in clips], "audio": [c[2] for c in clips], "text": ["ok"] * len(clips)}
    paths = {m: [shard_path(out, m, 0)] for m in MODALITIES}
    for m, arrays in (("visual", v), ("audio", a), ("text", t)):
        save_shard(paths[m][0], "k", pack(ids, arrays, statuses[m], detail), {})
    shards = [[Clip(i, "train", out / f"{i}.mp4") for i in ids]]
    index = ShardSet(out, shards, [dict.fromkeys(MODALITIES, "k")], paths, {m: [] for m in MODALITIES}).index()
    write_text(out / INDEX_FILE, index.to_csv(index=False))
    write_json(out / MANIFEST_FILE, {"fps": 5, "dims": DIMS, "encoders": [], "random_init": []})
    return out


def test_a_complete_store_passes_and_masked_modalities_are_warned(tmp_path):
    out = write_store(tmp_path / "f", [("1", "ok", "ok"), ("2", "ok", "no_audio"), ("3", "ok", "silent")])
    report = validate_features(out, 0.0, tmp_path / "reports")
    assert report.passed and report.problems == [] and report.n_rows == 3
    assert report.facts["clips_ok"] == 3 and report.facts["steps_total"] == 9
    assert report.facts["status_counts"]["audio"] == {"ok": 1, "no_audio": 1, "silent": 1}
    assert any(w.startswith("audio: 1 clip(s) no_audio") for w in report.warnings)
    assert (tmp_path / "reports" / "extract.json").is_file() and (tmp_path / "reports" / "extract.md").is_file()
    table, manifest = feature_table(out)
    assert table["visual_dim"].tolist() == [4, 4, 4] and manifest["dims"] == DIMS


def test_a_failed_clip_is_named_and_reported_not_raised(tmp_path):
    out = write_store(tmp_path / "f", [("1", "ok", "ok"), ("2", "error", "error"), ("3", "ok", "ok"),
                                       ("4", "ok", "ok")])
    report = validate_features(out, 0.0, None)  # no longer raises: the stage decides
    assert not report.passed and report.n_bad_rows == 1 and report.error_fraction == 0.25
    assert [p.Filename for p in report.problems] == ["2"]
    assert "raw/2.mp4 could not be processed: cannot decode" in report.problems[0].detail
    with pytest.raises(DataValidationError, match=r"\(id 2\)"):
        report.raise_if_failed()
    assert validate_features(out, 0.25, None).raise_if_failed().passed


def test_unequal_lengths_wrong_dims_and_nan_are_problems(tmp_path):
    out = write_store(tmp_path / "a", [("1", "ok", "ok"), ("2", "ok", "ok")], audio_steps={"2": 2})
    assert {p.Filename for p in validate_features(out, 0.0, None).problems} == {"2"}
    out = write_store(tmp_path / "b", [("1", "ok", "ok")], text_dim=5)
    report = validate_features(out, 0.0, None)
    assert not report.passed and "text_dim" in report.problems[0].detail
    out = write_store(tmp_path / "c", [("1", "ok", "ok"), ("2", "ok", "ok")], nan_in="1")
    assert [p.Filename for p in validate_features(out, 0.0, None).problems] == ["1"]


def test_a_listed_clip_without_features_is_fatal(tmp_path):
    out = write_store(tmp_path / "f", [("1", "ok", "ok")])
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train_split.csv").write_text("Filename\n1\n2\n")
    report = validate_features(out, 1.0, None, raw)
    assert not report.passed and report.fatal == ["1 listed id(s) have no features: 2"]
