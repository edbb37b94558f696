"""MLflow tracking and registry on a real sqlite store: run nesting, params, aliases, the logged model."""

from __future__ import annotations

import mlflow
import pytest
import torch
from mlflow import MlflowClient
from mlflow.models import Model

from emi import tracking
from emi.config import EMOTIONS, flatten, load_params
from emi.model import AlignmentModel, EMIFusionModel
from emi.stage1 import load_alignment
from emi.stage2 import load_model, save_model
from emi.train import save_checkpoint

DIMS = {"V": 12, "A": 10, "T": 8}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store per module: creating its tables takes seconds; tests isolate by experiment/model name."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    yield
    while mlflow.active_run():  # a failing test must not leave a run active for the next one
        mlflow.end_run()


def params_for(store: str, name: str, *overrides: str):
    return load_params(None, profile="tiny", overrides=[
        f"tracking.uri={store}", f"tracking.experiment={name}", f"tracking.registered_model={name}", *overrides])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Real Stage-I and Stage-II files in the formats emi/stage1.py and emi/stage2.py write."""
    root = tmp_path_factory.mktemp("weights")
    p = load_params(None, profile="tiny")
    alignment = AlignmentModel.from_params(p.stage1, DIMS)
    save_checkpoint(root / "alignment.pt", {
        "model": alignment.state_dict(), "dims": DIMS, "params": p.stage1.model_dump(mode="json"),
        "norm": {m: [torch.zeros(d), torch.ones(d)] for m, d in DIMS.items()}})
    save_model(root / "model.pt", EMIFusionModel.from_params(p.stage2, DIMS), p.stage2, DIMS)
    return root / "alignment.pt", root / "model.pt"


def register(params, weights, metric: float, data: str = "data-1") -> dict:
    with tracking.stage_run(params, "stage2", data):
        return tracking.register_model(params, *weights, {"valid_pearson_mean": metric, "valid_mse": 0.1,
                                                          "fusion": "quality"}, data)


def test_stages_of_one_pipeline_nest_under_one_parent_holding_all_params(store, tmp_path):
    params = params_for(store, "pipe")
    with tracking.stage_run(params, "stage1", "feat-1") as run1:
        tracking.log_history([{"epoch": 1, "train_loss": 0.9, "note": "x"}, {"epoch": 2, "train_loss": 0.7}])
        tracking.log_metrics({"valid_mse": 0.2, "fusion": "quality"})
        (tmp_path / "report.md").write_text("# ok\n")
        (tmp_path / "plots").mkdir()
        (tmp_path / "plots" / "a.txt").write_text("a")
        tracking.log_artifacts([tmp_path / "report.md", tmp_path / "plots", tmp_path / "missing.json"])
    with tracking.stage_run(params, "stage2") as run2:
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

    assert tracking.finish_pipeline(params) == parent_id
    assert client.get_run(parent_id).info.status == "FINISHED"
    with tracking.stage_run(params, "stage1") as again:  # the next pipeline run gets a new parent
        pass
    assert client.get_run(again.info.run_id).data.tags["mlflow.parentRunId"] != parent_id


def test_parent_named_by_the_flow_wins(store, monkeypatch):
    params = params_for(store, "flow")
    client = tracking.configure(params)
    flow_run = client.create_run(client.get_experiment_by_name("flow").experiment_id, run_name="prefect flow")
    monkeypatch.setenv(tracking.PARENT_ENV, flow_run.info.run_id)
    with tracking.stage_run(params, "extract") as run:
        pass
    assert client.get_run(run.info.run_id).data.tags["mlflow.parentRunId"] == flow_run.info.run_id
    assert client.get_run(flow_run.info.run_id).data.params["seed"] == str(params.seed)


def test_a_failing_stage_is_marked_failed_and_the_error_propagates(store):
    params = params_for(store, "fail")
    with pytest.raises(ValueError, match="boom"), tracking.stage_run(params, "stage1") as run:
        raise ValueError("boom")
    client = MlflowClient(store)
    child = client.get_run(run.info.run_id)
    assert child.info.status == "FAILED"
    assert mlflow.active_run() is None
    assert client.get_run(child.data.tags["mlflow.parentRunId"]).info.status == "RUNNING"  # a rerun lands there


def test_champion_moves_only_as_the_policy_says(store, weights):
    name = "policy"
    client = MlflowClient(store)
    alias = lambda a: str(client.get_model_version_by_alias(name, a).version)

    first = register(params_for(store, name), weights, 0.5)
    assert first == {"version": "1", "promoted": True, "champion_version": "1", "metric": 0.5,
                     "champion_metric_before": None, "reason": "no champion yet"}
    assert alias("champion") == alias("challenger") == "1"

    worse = register(params_for(store, name), weights, 0.4)
    assert (worse["promoted"], worse["champion_version"], worse["champion_metric_before"]) == (False, "1", 0.5)
    assert (alias("champion"), alias("challenger")) == ("1", "2")

    better = register(params_for(store, name), weights, 0.6)
    assert better["promoted"] and alias("champion") == "3"

    always = register(params_for(store, name, "tracking.promote=always"), weights, 0.1)
    assert always["promoted"] and alias("champion") == "4"
    never = register(params_for(store, name, "tracking.promote=never"), weights, 0.9)
    assert not never["promoted"] and (alias("champion"), alias("challenger")) == ("4", "5")
    within_delta = register(params_for(store, name, "tracking.min_delta=0.2"), weights, 0.25)
    assert not within_delta["promoted"] and alias("champion") == "4"

    tags = client.get_model_version(name, "3").tags
    assert tags["emi.data_fingerprint"] == "data-1" and float(tags["emi.metric.valid_pearson_mean"]) == 0.6


def test_registered_model_is_code_plus_weights_with_a_video_signature(store, weights):
    params = params_for(store, "signature")
    register(params, weights, 0.5)
    uri = "models:/signature@champion"

    sig = mlflow.models.get_model_info(uri).signature
    assert sig.inputs.input_names() == ["video"]
    assert sig.outputs.input_names() == [*EMOTIONS, "weight_V", "weight_A", "weight_T"]

    files = tracking.load_registered(params, uri)
    assert set(files) == {"alignment", "fusion", "params"}
    load_alignment(files["alignment"])  # torch weights_only loads, as `emi predict` will do
    assert isinstance(load_model(files["fusion"]), EMIFusionModel)
    model_dir = files["params"].parent.parent
    flavor = Model.load(model_dir / "MLmodel").flavors["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert (model_dir / "mlflow_model.py").is_file()
    assert not [p for p in model_dir.rglob("*.pkl")]  # models-from-code: nothing to unpickle

    loaded = mlflow.pyfunc.load_model(uri).unwrap_python_model()  # runs load_context, not the encoders
    assert loaded.params == params


def test_compare_shows_versions_side_by_side_with_only_the_params_that_differ(store, weights):
    register(params_for(store, "compare", "stage2.width=16"), weights, 0.5, data="data-a")
    register(params_for(store, "compare", "stage2.width=32"), weights, 0.4, data="data-b")
    table = tracking.compare_versions(params_for(store, "compare"))
    assert table.index("v2") < table.index("v1")  # newest first
    for text in ("champion", "challenger", "valid_pearson_mean", "0.5000", "0.4000", "data-a", "data-b",
                 "stage2.width"):
        assert text in table
    assert "stage1.embed_dim" not in table and "seed" not in table
    assert "v2" not in tracking.compare_versions(params_for(store, "compare"), ["1"])


def test_registering_into_a_finished_run_leaves_it_finished(store, weights):
    params = params_for(store, "later")
    metrics = {"valid_pearson_mean": 0.3}
    with pytest.raises(tracking.TrackingError, match="needs a run"):
        tracking.register_model(params, *weights, metrics, "data-1")
    with tracking.stage_run(params, "stage2") as run:
        pass
    result = tracking.register_model(params, *weights, metrics, "data-1", run_id=run.info.run_id)
    assert result["version"] == "1"
    finished = MlflowClient(store).get_run(run.info.run_id)
    assert finished.info.status == "FINISHED" and finished.data.metrics["valid_pearson_mean"] == 0.3
