"""Hume-Vidmimic2 as it ships, end to end through the stage commands dvc.yaml runs.

The folder is built from generated clips the way the licensed release looks: zero-padded file names in raw/,
split files with unpadded ids (`12` for `00012.mp4`), train + valid only, the unlabelled test clips present in raw/
without a split row, one clip remuxed into a container that declares 1000 fps, one clip longer than
`data.max_duration_s`, and a stray Thumbs.db.
"""

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from emi.config import EMOTIONS, SPLIT_HEADER
from emi.data.dataset import read_split, split_path
from emi.data.media import grid_steps, probe
from emi.params_yaml import use
from tests.conftest import EMI, concat_clip, remux_with_nominal_rate

REPO = Path(__file__).resolve().parents[2]
MAX_STEPS = 25  # 5 s at 5 fps: the generated clips (3-3.5 s) stay whole, the long one (~10 s) is subsampled
STAGES = ("download", "transcribe", "extract", "stage1", "augment", "stage2", "ablate", "evaluate")

pytestmark = pytest.mark.slow


def hume_folder(generated: Path, dst: Path) -> dict:
    """A Hume-Vidmimic2-like folder made from a generated dataset; returns what was done to which clip."""
    (dst / "raw").mkdir(parents=True)
    splits = {s: read_split(split_path(generated, s)) for s in ("train", "valid", "test")}
    for clip in sorted((generated / "raw").glob("*.mp4")):
        shutil.copy2(clip, dst / "raw" / clip.name)
    for s in ("train", "valid"):  # labels as shipped: ids without their zero padding
        table = splits[s].copy()
        table["Filename"] = [str(int(i)) for i in table["Filename"]]
        table.to_csv(dst / f"{s}_split.csv", index=False)
    bogus, long = splits["train"]["Filename"].iloc[0], splits["train"]["Filename"].iloc[1]
    remux_with_nominal_rate(generated / "raw" / f"{bogus}.mp4", dst / "raw" / f"{bogus}.mp4")
    concat_clip(generated / "raw" / f"{long}.mp4", dst / "raw" / f"{long}.mp4", times=3)
    (dst / "raw" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 not a video")
    return {"test": sorted(splits["test"]["Filename"]), "bogus": bogus, "long": long,
            "bogus_steps": grid_steps(probe(generated / "raw" / f"{bogus}.mp4").duration_s, 5)}


def stage_commands() -> dict[str, str]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: " ".join(stages[name]["cmd"].split()) for name in STAGES}


@pytest.fixture(scope="module")
def shipped(tiny_dataset, tmp_path_factory, mlflow_store):
    folder = tmp_path_factory.mktemp("hume") / "Hume-Vidmimic2"
    facts = hume_folder(tiny_dataset, folder)
    root = tmp_path_factory.mktemp("run")
    use("tiny", ["data.max_duration_s=8.0", f"extract.max_steps={MAX_STEPS}", "download.source=local",
                 f"download.local.path={folder}", "download.local.mode=copy", f"tracking.uri={mlflow_store}",
                 "tracking.registered_model=emi-fusion-licensed"], root / "params.yaml")
    runs = {}
    for name, cmd in stage_commands().items():
        argv = shlex.split(cmd)
        runs[name] = subprocess.run([EMI, *argv[1:]], cwd=root, capture_output=True, text=True, timeout=900)
        assert runs[name].returncode == 0, f"{name}: {cmd}\n{runs[name].stdout[-3000:]}\n{runs[name].stderr[-3000:]}"
    return root, facts, runs


def test_every_stage_exits_0_and_the_submission_lists_exactly_the_unlisted_clips(shipped):
    root, facts, _ = shipped
    text = (root / "reports/submission.csv").read_text()
    assert text.splitlines()[0] == ",".join(SPLIT_HEADER)
    sub = pd.read_csv(root / "reports/submission.csv", dtype={"Filename": str})
    assert sub["Filename"].tolist() == facts["test"]  # file stems, zero-padded, in id order
    assert sub[list(EMOTIONS)].notna().all().all()
    assert read_split(root / "data/raw/test_split.csv").columns.tolist() == ["Filename"]


def test_unpadded_ids_match_their_files_and_train_on_their_labels(shipped):
    root, facts, _ = shipped
    index = pd.read_csv(root / "data/features/index.csv", dtype={"id": str})
    assert (index["status"] == "ok").all(), index[index["status"] != "ok"]
    assert all(len(i) == 5 for i in index["id"]) and set(index["split"]) == {"train", "valid", "test"}
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert "valid_pearson_mean" in metrics and not any(k.startswith("test_") for k in metrics)
    download = json.loads((root / "reports/validation/download.json").read_text())
    assert download["passed"] and download["facts"]["rows_per_split"]["test"] == len(facts["test"])
    assert download["facts"]["test_clips"].startswith(f"test (unlabelled): {len(facts['test'])} clip(s) in raw/")
    assert 1000.0 in download["facts"]["fps"]  # the remuxed clip's nominal rate is reported, not used


def test_long_clip_is_featurized_on_max_steps_and_the_bogus_rate_clip_on_its_timestamps(shipped):
    root, facts, _ = shipped
    index = pd.read_csv(root / "data/features/index.csv", dtype={"id": str}, keep_default_na=False).set_index("id")
    long = index.loc[facts["long"]]
    assert long["n_steps"] == MAX_STEPS and long["n_audio_steps"] == MAX_STEPS
    assert f"featurized on {MAX_STEPS} of its" in long["detail"]
    assert index.loc[facts["bogus"], "n_steps"] == facts["bogus_steps"]
    report = json.loads((root / "reports/validation/download.json").read_text())
    assert any("longer than data.max_duration_s" in w and facts["long"] in w for w in report["warnings"])


def test_report_says_there_was_no_labelled_test_split_and_where_the_test_clips_came_from(shipped):
    root, facts, _ = shipped
    report = (root / "reports/report.md").read_text()
    assert "no labelled test split" in report
    assert f"{len(facts['test'])} clip(s) in raw/ that no split file lists" in report
    assert f"`submission.csv`: {len(facts['test'])} rows for {len(facts['test'])} test clips" in report
