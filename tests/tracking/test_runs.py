"""MLflow runs on a real sqlite store: one parent per pipeline run, nested stage runs, params, metrics, artifacts."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from emi.config import flatten, load_params
from emi.tracking import runs
from tests.tracking.conftest import params_for


@pytest.mark.slow  # a real MLflow store
def test_stages_of_one_pipeline_nest_under_one_parent_holding_all_params(store, tmp_path):
    params = params_for(store, "pipe")
    with runs.stage_run(params, "stage1", "feat-1") as run1:
        runs.log_history([{"epoch": 1, "train_loss": 0.9, "note": "x"}, {"epoch": 2, "train_loss": 0.7}])
        runs.log_metrics({"valid_mse": 0.2, "fusion": "quality"})
        (tmp_path / "report.md").write_text("# ok\n")
        (tmp_path / "plots").mkdir()
        (tmp_path / "plots" / "a.txt").write_text("a")
        runs.log_artifacts([tmp_path / "report.md", tmp_path / "plots", tmp_path / "missing.json"])
    with runs.stage_run(params, "stage2") as run2:
        pass

    client = MlflowClient(store)
    child1, child2 = client.get_run(run1.info.run_id), client.get_run(run2.info.run_id)
    parent_id = child1.data.tags["mlflow.parentRunId"]
    assert child2.data.tags["mlflow.parentRunId"] == parent_id
    assert (child1.info.run_name, child1.data.tags["emi.stage"], child1.data.tags["emi.data_fingerprint"]) == (
        "stage1", "stage1", "feat-1")
    assert child1.info.status == child2.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(child1.info.run_id, "train_loss")] == [1, 2]
    assert child1.data.metrics["valid_mse"] == 0.2 and "fusion" not in child1.data.metrics
    assert sorted(a.path for a in client.list_artifacts(child1.info.run_id)) == ["plots", "report.md"]

    parent = client.get_run(parent_id)
    assert parent.info.run_name.startswith("pipeline tiny ")
    assert parent.data.params["stage2.width"] == str(params.stage2.width)
    assert len(parent.data.params) == len(flatten(params))  # every key, '~' in names included
    assert parent.info.status == "RUNNING"

    assert runs.finish_pipeline(params) == parent_id
    assert client.get_run(parent_id).info.status == "FINISHED"
    with runs.stage_run(params, "stage1") as again:  # the next pipeline run gets a new parent
        pass
    assert client.get_run(again.info.run_id).data.tags["mlflow.parentRunId"] != parent_id


@pytest.mark.slow  # a real MLflow store
def test_parent_named_by_the_flow_wins(store, monkeypatch):
    params = params_for(store, "flow")
    client = runs.configure(params)
    flow_run = client.create_run(client.get_experiment_by_name("flow").experiment_id, run_name="prefect flow")
    monkeypatch.setenv(runs.PARENT_ENV, flow_run.info.run_id)
    with runs.stage_run(params, "extract") as run:
        pass
    assert client.get_run(run.info.run_id).data.tags["mlflow.parentRunId"] == flow_run.info.run_id
    assert client.get_run(flow_run.info.run_id).data.params["seed"] == str(params.seed)


@pytest.mark.slow  # a real MLflow store
def test_a_flow_runs_parent_carries_its_lineage(store):
    params = params_for(store, "lineage")
    parent = runs.pipeline_run(params, fresh=True, tags={runs.FLOW_RUN_TAG: "flow-123"})
    runs.tag_outputs(params, parent, {"data/raw": "abc.dir", "reports/validation/download.json": "def", "x": ""},
                     "download")
    assert runs.finish_pipeline(params, run_id=parent) == parent
    run = MlflowClient(store).get_run(parent)
    tags = run.data.tags
    assert tags[runs.FLOW_RUN_TAG] == "flow-123" and run.info.status == "FINISHED"
    assert tags["emi.dvc.download.data/raw"] == "abc.dir"
    assert tags["emi.dvc.download.reports/validation/download.json"] == "def"
    assert "emi.dvc.download.x" not in tags  # an output DVC has not hashed yet
    assert tags["mlflow.source.git.commit"] == runs.git_commit()


@pytest.mark.slow  # a real MLflow store
def test_a_failing_stage_is_marked_failed_and_the_error_propagates(store):
    params = params_for(store, "fail")
    with pytest.raises(ValueError, match="boom"), runs.stage_run(params, "stage1") as run:
        raise ValueError("boom")
    client = MlflowClient(store)
    child = client.get_run(run.info.run_id)
    assert child.info.status == "FAILED"
    assert mlflow.active_run() is None
    assert client.get_run(child.data.tags["mlflow.parentRunId"]).info.status == "RUNNING"  # a rerun lands there


def test_pure_helpers_name_keys_numbers_and_pipelines():
    assert runs.param_key("download.synthetic.latent_correlation.Joy~Amusement") == (
        "download.synthetic.latent_correlation.Joy_Amusement")
    assert runs.param_key("stage2.width") == "stage2.width"
    assert [runs.numeric(v) for v in (1, 0.5, np.float32(2), torch.tensor(3.0), True, "0.5", None, [1])] == [
        True, True, True, True, False, False, False, False]
    p = load_params(None, profile="tiny")
    assert runs.pipeline_key(p, "abc") == runs.pipeline_key(p, "abc")
    assert runs.pipeline_key(p, "abc") != runs.pipeline_key(p, "def"), "a new commit starts a new pipeline run"
    assert runs.pipeline_key(p, "abc") != runs.pipeline_key(load_params(None, profile="tiny", overrides=["seed=9"]),
                                                             "abc")
