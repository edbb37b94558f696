"""The Prefect side for real: one Prefect server, the local recipe (pool, deployments, process worker,
`prefect deployment run emi/full`) in a clone of this working tree, each flow task reproducing a DVC stage; a second
clone restoring everything from a shared DVC remote; a plain `dvc repro` giving the same bytes."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from emi.config import load_params
from emi.orchestration.dvc import DvcPipeline
from emi.params_yaml import use
from tests.conftest import REPO
from tests.pipeline.recipe import DVC, RESULTS, SMALL, STAGES, clone, clone_env, outcomes, recipe, sh


@pytest.mark.slow
def test_the_flow_is_the_dvc_pipeline_and_a_second_clone_restores_it_from_the_remote(tmp_path, prefect_api):
    remote = tmp_path / "remote"
    first, second = clone(tmp_path / "first", remote), clone(tmp_path / "second", remote)
    # the reference: a plain `dvc repro` of the same commit and params in a clone of its own, run meanwhile
    reference = clone(tmp_path / "reference", None)
    use("tiny", SMALL, reference / "params.yaml")
    plain = subprocess.Popen([DVC, "repro"], cwd=reference, env=clone_env(reference), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)

    cold = time.perf_counter()
    log = recipe(first, prefect_api)
    cold = time.perf_counter() - cold
    assert outcomes(log) == {s: ["ran its command"] for s in STAGES}, log[-3000:]
    assert "registered emi-fusion v1" in log  # the flow's last task: the registry, outside every DVC output
    assert "Data and pipelines are up to date" in sh(DVC, "status", cwd=first)
    repro = sh(DVC, "repro", cwd=first)
    assert "Running stage" not in repro and all(f"Stage '{s}' didn't change" in repro for s in STAGES)
    assert "in sync" in sh(DVC, "status", "--cloud", cwd=first)  # the flow pushed every output
    assert "Everything is up to date" in sh(DVC, "push", cwd=first)

    # a fresh checkout elsewhere: same commit, same remote, one Prefect server; nothing is recomputed
    restore = time.perf_counter()
    log = recipe(second, prefect_api)
    restore = time.perf_counter() - restore
    assert outcomes(log) == {s: ["restored from DVC's run-cache"] for s in STAGES}, log[-3000:]
    assert "Running stage" not in log
    assert "Data and pipelines are up to date" in sh(DVC, "status", cwd=second)

    out, _ = plain.communicate(timeout=1200)
    assert plain.returncode == 0, out[-3000:]
    for rel in RESULTS:  # bit-identical metrics: the flow, its restore, and a plain dvc repro
        assert (first / rel).read_bytes() == (second / rel).read_bytes() == (reference / rel).read_bytes(), rel
    # every output of one commit is bit-identical across runs and MLflow stores (DVC's hashes): the first clone's
    # store holds a registered model, the reference's none
    assert DvcPipeline(first).output_hashes() == DvcPipeline(reference).output_hashes()
    print(f"\ncold Prefect run {cold:.0f} s, second-clone restore {restore:.0f} s")

    # lineage: the flow run's MLflow parent run names the Prefect flow run and the DVC hash of every output
    from mlflow import MlflowClient

    from emi.tracking.runs import FLOW_RUN_TAG, PIPELINE_KEY_TAG

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

    # DVC's own tools on the result: the headline fits a screen, an experiment changes one param and reruns only the
    # stages that read it, and after switching profiles `dvc params diff` lists the values that changed
    metrics = json.loads(sh(DVC, "metrics", "show", "--json", cwd=first))
    (workspace,) = metrics.values()  # DVC 3 keys the workspace as ""
    values = workspace["data"]["reports/metrics.json"]["data"]
    assert len(values) <= 25 and list(workspace["data"]) == ["reports/metrics.json"]
    experiment = sh(DVC, "exp", "run", "-S", "stage2.width=64", cwd=first)
    ran = set(re.findall(r"Running stage '(\w+)'", experiment))
    assert ran == {"stage2", "ablate", "evaluate"}, experiment[-3000:]
    assert load_params(first / "params.yaml").stage2.width == 64
    use("paper", [], first / "params.yaml")
    diff = json.loads(sh(DVC, "params", "diff", "--json", cwd=first))["params.yaml"]
    assert diff["extract.visual.name"] == {"old": "mini-xception", "new": "ViT-B-16"}
    assert (diff["stage2.width"]["old"], diff["stage2.width"]["new"]) == (128, 256)  # numbers also get a "diff"


def test_the_recipe_and_deployments_name_the_flow_of_this_repo():
    import yaml

    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    assert deployments["full"]["entrypoint"] == "flows/emi_flow.py:emi"
    assert deployments["ablation"]["parameters"] == {"stages": ["ablate"]}
