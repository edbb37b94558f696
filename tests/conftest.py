"""Shared fixtures: the tiny profile and one generated tiny dataset per test session."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from emi.config import Params, load_params
from emi.synth.generate import generate


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory) -> str:
    """Every stage logs to MLflow: during tests, to a real store in a temp folder, never the repo's."""
    import os

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ.pop("EMI_MLFLOW_PARENT_RUN_ID", None)
    return uri


@pytest.fixture(scope="session")
def tiny_params() -> Params:
    return load_params(None, profile="tiny")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, tiny_params) -> Path:
    """A generated dataset in the Hume-Vidmimic2 layout (read-only: copy it before changing it)."""
    root = tmp_path_factory.mktemp("tiny") / "raw"
    generate(tiny_params.download.synthetic, tiny_params.seed, root, show_progress=False)
    return root


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path) -> Path:
    dst = tmp_path / "dataset"
    shutil.copytree(tiny_dataset, dst)
    return dst


EMI = str(Path(sys.executable).parent / "emi")
"""The console script installed next to the interpreter running the tests (PATH may not include the venv)."""
