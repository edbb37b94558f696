"""``emi.orchestration.pools``: which stages go to other work pools, and what they need."""

from __future__ import annotations

import pytest

from emi.orchestration.dvc import PipelineError
from emi.orchestration.pools import check_pools, pool_deployment


def test_pools_name_known_stages_and_need_the_remote_their_outputs_come_back_through():
    stages = ["make", "count"]
    check_pools({}, stages, remote=False)
    check_pools({"make": "gpu"}, stages, remote=True)
    with pytest.raises(PipelineError, match="no stage train in dvc.yaml; stages: make, count"):
        check_pools({"train": "gpu"}, stages, remote=True)
    with pytest.raises(PipelineError, match="sends make to gpu, but this checkout has no default DVC remote"):
        check_pools({"make": "gpu"}, stages, remote=False)
    assert pool_deployment("gpu") == "emi-stage/gpu"
