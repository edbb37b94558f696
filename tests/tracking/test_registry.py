"""The MLflow model registry on a real sqlite store: aliases by the promotion policy, the logged pyfunc model,
comparing versions."""

from __future__ import annotations

import mlflow
import pytest
import torch
from mlflow import MlflowClient
from mlflow.models import Model

from emi.config import EMOTIONS, load_params
from emi.model import AlignmentModel, EMIFusionModel
from emi.tracking import registry, runs
from tests.tracking.conftest import params_for
from emi.train.projection import load_alignment
from emi.train.fusion import load_model, save_model
from emi.train.loop import save_checkpoint

DIMS = {"V": 12, "A": 10, "T": 8}
FUSION_DIMS = DIMS | {"cues_V": 5, "cues_A": 3}  # the tiny profile's scorer reads reliability cues


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Real Stage-I and Stage-II files in the formats emi/train/alignment.py and emi/train/fusion.py write."""
    root = tmp_path_factory.mktemp("weights")
    p = load_params(None, profile="tiny")
    alignment = AlignmentModel.from_params(p.stage1, DIMS)
    save_checkpoint(root / "alignment.pt", {
        "model": alignment.state_dict(), "dims": DIMS, "params": p.stage1.model_dump(mode="json"),
        "norm": {m: [torch.zeros(d), torch.ones(d)] for m, d in DIMS.items()}})
    save_model(root / "model.pt", EMIFusionModel.from_params(p.stage2, FUSION_DIMS), p.stage2, FUSION_DIMS)
    return root / "alignment.pt", root / "model.pt"


def register(params, weights, metric: float, data: str = "data-1", probe: float | None = 0.0) -> dict:
    metrics = {"valid_pearson_mean": metric, "valid_mse": 0.1, "fusion": "quality"}
    if probe is not None:
        metrics["linear_probe_pearson_mean"] = probe
    with runs.stage_run(params, "stage2", data):
        return registry.register_model(params, *weights, metrics, data)


@pytest.mark.slow  # a real MLflow store
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


@pytest.mark.slow  # a real MLflow store
def test_no_model_that_its_own_linear_probe_beats_becomes_champion(store, weights):
    """A model at or below its run's ridge on clip means is registered as a version but not made champion, whatever
    the policy; register and compare say why. ``tracking.floor`` may be a number, or null for none."""
    name = "floor"
    client = MlflowClient(store)
    floored = lambda *overrides: params_for(store, name, "tracking.floor=probe", *overrides)  # tiny's is null
    params = floored()
    champion = lambda: [str(mv.version) for mv in client.search_model_versions(f"name = '{name}'") if "champion" in
                        client.get_model_version(name, mv.version).aliases]

    bad = register(params, weights, 0.0011, probe=0.3551)  # the first version: no champion to beat
    assert (bad["version"], bad["promoted"], bad["champion_version"]) == ("1", False, None)
    assert "below the floor" in bad["reason"] and "linear probe 0.3551" in bad["reason"]
    assert champion() == [] and str(client.get_model_version_by_alias(name, "challenger").version) == "1"

    good = register(params, weights, 0.40, probe=0.35)
    assert good["promoted"] and champion() == ["2"]
    tie = register(params, weights, 0.45, probe=0.45)  # better than the champion, but no better than a ridge
    assert not tie["promoted"] and champion() == ["2"] and "below the floor" in tie["reason"]
    always = register(floored("tracking.promote=always"), weights, 0.9, probe=0.95)
    assert not always["promoted"] and champion() == ["2"], "no policy promotes a model below its floor"
    no_probe = register(params, weights, 0.9, probe=None)  # a run without the ablation's probe: floor unknown
    assert not no_probe["promoted"] and "linear_probe_pearson_mean" in no_probe["reason"]
    number = register(params_for(store, name, "tracking.floor=0.95"), weights, 0.9, probe=0.1)
    assert not number["promoted"] and "tracking.floor 0.9500" in number["reason"]
    none = register(params_for(store, name, "tracking.floor=null"), weights, 0.5, probe=0.9)
    assert none["promoted"] and champion() == ["7"]

    table = registry.compare_versions(params, ["1", "2"])
    assert "promotion" in table and "not champion: below the floor" in table and "linear_probe_pearson_mean" in table
    assert client.get_model_version(name, "2").tags[registry.PROMOTION_TAG].startswith("champion: ")


@pytest.mark.slow  # a real MLflow store
def test_registered_model_is_code_plus_weights_with_a_video_signature(store, weights):
    params = params_for(store, "signature")
    register(params, weights, 0.5)
    uri = "models:/signature@champion"

    sig = mlflow.models.get_model_info(uri).signature
    assert sig.inputs.input_names() == ["video"]
    assert sig.outputs.input_names() == [*EMOTIONS, "weight_V", "weight_A", "weight_T"]

    files = registry.load_registered(params, uri)
    assert set(files) == {"alignment", "fusion", "params"}
    load_alignment(files["alignment"])  # torch weights_only loads, as `emi predict` will do
    assert isinstance(load_model(files["fusion"]), EMIFusionModel)
    model_dir = files["params"].parent.parent
    flavor = Model.load(model_dir / "MLmodel").flavors["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert (model_dir / "pyfunc.py").is_file()  # the code file (emi/tracking/pyfunc.py, was emi/mlflow_model.py)
    assert not [p for p in model_dir.rglob("*.pkl")]  # models-from-code: nothing to unpickle

    loaded = mlflow.pyfunc.load_model(uri).unwrap_python_model()  # runs load_context, not the encoders
    assert loaded.params == params


@pytest.mark.slow  # a real MLflow store
def test_compare_shows_versions_side_by_side_with_only_the_params_that_differ(store, weights):
    register(params_for(store, "compare", "stage2.width=16"), weights, 0.5, data="data-a")
    register(params_for(store, "compare", "stage2.width=32"), weights, 0.4, data="data-b")
    table = registry.compare_versions(params_for(store, "compare"))
    assert table.index("v2") < table.index("v1")  # newest first
    for text in ("champion", "challenger", "valid_pearson_mean", "0.5000", "0.4000", "data-a", "data-b",
                 "stage2.width"):
        assert text in table
    assert "stage1.embed_dim" not in table and "seed" not in table
    assert "different data" in table  # never compared as if equal
    only_one = registry.compare_versions(params_for(store, "compare"), ["1"])
    assert "v2" not in only_one and "different data" not in only_one
    version = MlflowClient(store).get_model_version(params_for(store, "compare").tracking.registered_model, "2")
    assert version.tags[registry.RUN_TAG] == version.run_id and version.tags[runs.DATA_TAG] == "data-b"
    assert version.tags[registry.PIPELINE_RUN_TAG] == MlflowClient(store).get_run(version.run_id).data.tags[
        "mlflow.parentRunId"]


@pytest.mark.slow  # a real MLflow store
def test_registering_into_a_finished_run_leaves_it_finished(store, weights):
    params = params_for(store, "later")
    metrics = {"valid_pearson_mean": 0.3}
    with pytest.raises(registry.TrackingError, match="needs a run"):
        registry.register_model(params, *weights, metrics, "data-1")
    with runs.stage_run(params, "stage2") as run:
        pass
    result = registry.register_model(params, *weights, metrics, "data-1", run_id=run.info.run_id)
    assert result["version"] == "1"
    finished = MlflowClient(store).get_run(run.info.run_id)
    assert finished.info.status == "FINISHED" and finished.data.metrics["valid_pearson_mean"] == 0.3


def test_promotion_policy():
    assert registry.promotion("always", 0.1, 0.9, True, 0.0) == (True, "promote=always")
    assert registry.promotion("never", 0.9, 0.1, True, 0.0) == (False, "promote=never")
    assert registry.promotion("better", None, None, False, 0.0) == (True, "no champion yet")
    assert not registry.promotion("better", None, 0.5, True, 0.0)[0], "no finite metric: keep the champion"
    assert registry.promotion("better", 0.4, None, True, 0.0)[0], "a champion without the metric is replaced"
    assert registry.promotion("better", 0.6, 0.5, True, 0.0)[0]
    assert not registry.promotion("better", 0.6, 0.5, True, 0.2)[0], "within min_delta: no promotion"
    assert not registry.promotion("better", 0.5, 0.5, True, 0.0)[0], "a tie keeps the champion"
    below = (False, "valid_pearson_mean 0.0011 <= the run's linear probe 0.3551")
    assert registry.promotion("better", 0.0011, None, False, 0.0, below) == (False, f"below the floor: {below[1]}")
    assert not registry.promotion("always", 0.9, 0.1, True, 0.0, below)[0]
    assert registry.promotion("never", 0.9, None, False, 0.0, (True, "")) == (False, "promote=never")


def test_the_floor_is_the_runs_own_linear_probe_a_number_or_none():
    metrics = {"linear_probe_pearson_mean": 0.35}
    assert registry.above_floor(0.36, "probe", metrics)[0] and not registry.above_floor(0.35, "probe", metrics)[0]
    assert not registry.above_floor(0.9, "probe", {})[0], "no probe score: the floor is unknown, so not above it"
    assert not registry.above_floor(None, 0.1, metrics)[0]
    assert registry.above_floor(0.2, 0.1, metrics) == (True, "valid_pearson_mean 0.2000 > tracking.floor 0.1000")
    assert registry.above_floor(-0.5, None, metrics) == (True, "no floor")


def test_params_of_a_model_registered_before_the_floor_still_load():
    """A registered version's params.json is validated at load (emi predict): one written before
    ``tracking.floor`` existed loads, with the default floor."""
    from emi.config import Params

    dumped = load_params(None, profile="embedded").model_dump(mode="json")
    del dumped["tracking"]["floor"]
    assert Params.model_validate(dumped).tracking.floor == "probe"
