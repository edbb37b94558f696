"""A real MLflow sqlite store per test module, and params pointing at it."""

from __future__ import annotations

import mlflow
import pytest

from emi.config import load_params
from emi.tracking import runs


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store per module: creating its tables takes seconds; tests isolate by experiment/model name."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(runs.PARENT_ENV, raising=False)
    yield
    while mlflow.active_run():  # a failing test must not leave a run active for the next one
        mlflow.end_run()


def params_for(store: str, name: str, *overrides: str):
    return load_params(None, profile="tiny", overrides=[
        f"tracking.uri={store}", f"tracking.experiment={name}", f"tracking.registered_model={name}", *overrides])
