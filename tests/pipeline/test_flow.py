"""The Prefect side for real, on a folder laid out as Hume-Vidmimic2 ships: one Prefect server, the local recipe
(pool, deployments, process worker, `prefect deployment run emi/full`) in a clone of this working tree, each flow
task reproducing a DVC stage; a second clone restoring everything from a shared DVC remote; a plain `dvc repro`
giving the same bytes.

The folder (`hume_folder`) is built from generated clips the way the licensed release looks: zero-padded file names
in raw/, split files with unpadded ids (`12` for `00012.mp4`), train + valid only, the unlabelled test clips present
in raw/ without a split row, one clip remuxed into a container that declares 1000 fps, one clip longer than
`data.max_duration_s`, and a stray Thumbs.db. Both pipeline runs read it as a user's local copy
(`download.source: local`), so what a user with the licensed data runs is what runs here, through Prefect and
through plain DVC.

The runs are module fixtures and each test checks one thing they did, so a slow machine stretches the fixtures, not
one test holding the whole story. What a later test changes (an experiment in the second clone) is not read by an
earlier one: the fixtures keep the bytes the checks compare."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from emi.config import EMOTIONS, SPLIT_HEADER, load_params
from emi.data.dataset import read_split, split_path
from emi.data.media import grid_steps, probe
from emi.orchestration.dvc import DvcPipeline
from emi.params_yaml import use
from emi.synth.generate import generate
from tests.conftest import REPO, concat_clip, remux_with_nominal_rate, tiny
from tests.pipeline.recipe import DVC, RESULTS, SMALL, STAGES, clone, clone_env, outcomes, recipe, sh

MAX_STEPS = 25  # 5 s at 5 fps: the generated clips (3-4.5 s) stay whole, the long one (~10 s) is subsampled


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


def results(checkout: Path) -> dict[str, bytes]:
    """The bytes every stage's numbers end up in, and DVC's hash of every output."""
    return {**{rel: (checkout / rel).read_bytes() for rel in RESULTS},
            "dvc.lock outputs": json.dumps(DvcPipeline(checkout).output_hashes(), sort_keys=True).encode()}


@pytest.fixture(scope="module")
def cold(tmp_path_factory, prefect_api):
    """The recipe in a fresh clone with a DVC remote, on the Hume-Vidmimic2-like folder: every stage runs. Then a
    plain `dvc repro` of the same commit and params in a clone of its own starts (the reference), while the tests
    below use the flow's checkout."""
    root = tmp_path_factory.mktemp("flow")
    generated = root / "generated"
    small = tiny(*SMALL)
    generate(small.download.synthetic, small.seed, generated, show_progress=False)
    folder = root / "Hume-Vidmimic2"
    facts = hume_folder(generated, folder)
    licensed = ["download.source=local", f"download.local.path={folder}", "download.local.mode=copy",
                "data.max_duration_s=8.0", f"extract.max_steps={MAX_STEPS}"]
    remote = root / "remote"
    first = clone(root / "first", remote)
    started = time.perf_counter()
    recipe_args = [a for kv in licensed for a in ("--set", kv)]
    log = recipe(first, prefect_api, *recipe_args)
    seconds = time.perf_counter() - started
    print(f"\ncold Prefect run {seconds:.0f} s")
    reference = clone(root / "reference", None)
    use("tiny", [*SMALL, *licensed], reference / "params.yaml")
    plain = subprocess.Popen([DVC, "repro"], cwd=reference, env=clone_env(reference), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        yield SimpleNamespace(root=root, remote=remote, first=first, log=log, results=results(first),
                              reference=reference, plain=plain, facts=facts, recipe_args=recipe_args)
    finally:
        if plain.poll() is None:
            plain.kill()
            plain.communicate()


@pytest.fixture(scope="module")
def restored(cold, prefect_api):
    """A fresh checkout elsewhere: same commit, same remote, the same Prefect server."""
    second = clone(cold.root / "second", cold.remote)
    started = time.perf_counter()
    log = recipe(second, prefect_api, *cold.recipe_args)
    print(f"\nsecond-clone restore {time.perf_counter() - started:.0f} s")
    return SimpleNamespace(second=second, log=log, results=results(second),
                           status=sh(DVC, "status", cwd=second))


@pytest.mark.slow
def test_the_flow_runs_every_dvc_stage_and_leaves_the_checkout_as_dvc_repro_would(cold):
    first = cold.first
    assert outcomes(cold.log) == {s: ["ran its command"] for s in STAGES}, cold.log[-3000:]
    assert "registered emi-fusion v1" in cold.log  # the flow's last task: the registry, outside every DVC output
    assert "Data and pipelines are up to date" in sh(DVC, "status", cwd=first)
    repro = sh(DVC, "repro", cwd=first)
    assert "Running stage" not in repro and all(f"Stage '{s}' didn't change" in repro for s in STAGES)
    assert "in sync" in sh(DVC, "status", "--cloud", cwd=first)  # the flow pushed every output
    assert "Everything is up to date" in sh(DVC, "push", cwd=first)


@pytest.mark.slow
def test_a_second_clone_restores_every_stage_from_the_remote_and_recomputes_nothing(restored):
    assert outcomes(restored.log) == {s: ["restored from DVC's run-cache"] for s in STAGES}, restored.log[-3000:]
    assert "Running stage" not in restored.log
    assert "Data and pipelines are up to date" in restored.status


@pytest.mark.slow
def test_the_flow_its_restore_and_a_plain_dvc_repro_give_the_same_bytes(cold, restored):
    out, _ = cold.plain.communicate(timeout=1200)
    assert cold.plain.returncode == 0, out[-3000:]
    # bit-identical metrics, and every output of one commit bit-identical across runs and MLflow stores (DVC's
    # hashes): the first clone's store holds a registered model, the reference's none
    reference = results(cold.reference)
    for rel in reference:
        assert cold.results[rel] == restored.results[rel] == reference[rel], rel


@pytest.mark.slow
def test_the_flow_runs_mlflow_parent_run_names_the_prefect_flow_run_and_every_outputs_dvc_hash(cold):
    from mlflow import MlflowClient

    from emi.tracking.runs import FLOW_RUN_TAG, PIPELINE_KEY_TAG

    first = cold.first
    client = MlflowClient(f"sqlite:///{first / 'mlflow.db'}")
    params = load_params(first / "params.yaml")
    exp = client.get_experiment_by_name(params.tracking.experiment)
    parents = [r for r in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
               if PIPELINE_KEY_TAG in r.data.tags and "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags.get(FLOW_RUN_TAG)
    tags = parents[0].data.tags
    hashes = DvcPipeline(first).output_hashes()
    assert tags["emi.dvc.extract.data/features"] == hashes["extract"]["data/features"]
    assert tags["emi.dvc.stage2.models/stage2/model.pt"] == hashes["stage2"]["models/stage2/model.pt"]
    assert tags["mlflow.source.git.commit"] == sh("git", "rev-parse", "HEAD", cwd=first).strip()


@pytest.mark.slow
def test_dvc_metrics_experiments_and_params_diff_work_on_the_restored_checkout(restored):
    # the headline fits a screen; an experiment changes one param and reruns only the stages that read it
    # (evaluate.ceiling_alpha: evaluate alone; that dvc.yaml lists the keys each stage reads is
    # tests/test_architecture.py's check); after switching profiles `dvc params diff` lists the values that changed
    second = restored.second
    metrics = json.loads(sh(DVC, "metrics", "show", "--json", cwd=second))
    (workspace,) = metrics.values()  # DVC 3 keys the workspace as ""
    values = workspace["data"]["reports/metrics.json"]["data"]
    assert len(values) <= 25 and list(workspace["data"]) == ["reports/metrics.json"]
    experiment = sh(DVC, "exp", "run", "-S", "evaluate.ceiling_alpha=10.0", cwd=second)
    ran = set(re.findall(r"Running stage '(\w+)'", experiment))
    assert ran == {"evaluate"}, experiment[-3000:]
    assert load_params(second / "params.yaml").evaluate.ceiling_alpha == 10.0
    use("paper", [], second / "params.yaml")
    diff = json.loads(sh(DVC, "params", "diff", "--json", cwd=second))["params.yaml"]
    assert diff["extract.visual.name"] == {"old": "mini-xception", "new": "ViT-B-16"}
    assert (diff["stage2.width"]["old"], diff["stage2.width"]["new"]) == (128, 256)  # numbers also get a "diff"


# what the licensed layout made the stages do (read in the flow's checkout; the reference has the same bytes)

@pytest.mark.slow
def test_the_submission_lists_exactly_the_clips_no_split_file_lists(cold):
    root, facts = cold.first, cold.facts
    text = (root / "reports/submission.csv").read_text()
    assert text.splitlines()[0] == ",".join(SPLIT_HEADER)
    sub = pd.read_csv(root / "reports/submission.csv", dtype={"Filename": str})
    assert sub["Filename"].tolist() == facts["test"]  # file stems, zero-padded, in id order
    assert sub[list(EMOTIONS)].notna().all().all()
    assert read_split(root / "data/raw/test_split.csv").columns.tolist() == ["Filename"]


@pytest.mark.slow
def test_unpadded_ids_match_their_files_and_train_on_their_labels(cold):
    root, facts = cold.first, cold.facts
    index = pd.read_csv(root / "data/features/index.csv", dtype={"id": str})
    assert (index["status"] == "ok").all(), index[index["status"] != "ok"]
    assert all(len(i) == 5 for i in index["id"]) and set(index["split"]) == {"train", "valid", "test"}
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert "valid_pearson_mean" in metrics and not any(k.startswith("test_") for k in metrics)
    download = json.loads((root / "reports/validation/download.json").read_text())
    assert download["passed"] and download["facts"]["rows_per_split"]["test"] == len(facts["test"])
    assert download["facts"]["test_clips"].startswith(f"test (unlabelled): {len(facts['test'])} clip(s) in raw/")
    assert 1000.0 in download["facts"]["fps"]  # the remuxed clip's nominal rate is reported, not used


@pytest.mark.slow
def test_a_long_clip_is_featurized_on_max_steps_and_the_bogus_rate_clip_on_its_timestamps(cold):
    root, facts = cold.first, cold.facts
    index = pd.read_csv(root / "data/features/index.csv", dtype={"id": str}, keep_default_na=False).set_index("id")
    long = index.loc[facts["long"]]
    assert long["n_steps"] == MAX_STEPS and long["n_audio_steps"] == MAX_STEPS
    assert f"featurized on {MAX_STEPS} of its" in long["detail"]
    assert index.loc[facts["bogus"], "n_steps"] == facts["bogus_steps"]
    report = json.loads((root / "reports/validation/download.json").read_text())
    assert any("longer than data.max_duration_s" in w and facts["long"] in w for w in report["warnings"])


@pytest.mark.slow
def test_the_report_says_there_was_no_labelled_test_split_and_where_the_test_clips_came_from(cold):
    report = (cold.first / "reports/report.md").read_text()
    n = len(cold.facts["test"])
    assert "no labelled test split" in report
    assert f"{n} clip(s) in raw/ that no split file lists" in report
    assert f"`submission.csv`: {n} rows for {n} test clips" in report


def test_the_recipe_and_deployments_name_the_flow_of_this_repo():
    import yaml

    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    assert deployments["full"]["entrypoint"] == "flows/emi_flow.py:emi"
    assert deployments["ablation"]["parameters"] == {"stages": ["ablate"]}
