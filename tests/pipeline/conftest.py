"""The Prefect tests' server: one per test module (a module's clones share it, as machines share one server)."""

from __future__ import annotations

import pytest

from tests.pipeline.recipe import prefect_server


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    with prefect_server(tmp_path_factory.mktemp("prefect-server")) as url:
        yield url
