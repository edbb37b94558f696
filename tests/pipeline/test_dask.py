"""The flow's Dask fan-out of extract: shards done by Dask workers are the shards DVC's extract stage finds."""

from __future__ import annotations

import numpy as np
import pytest

from emi.config import load_params


@pytest.mark.slow
def test_dask_fanout_leaves_every_shard_finished_for_the_dvc_stage(tiny_dataset, tiny_features, tmp_path):
    """The reference is the session's one-process extract of the same clips and transcripts (``tiny_features``, in
    the tiny profile's shards): the fanned-out shards must hold the same bytes."""
    from prefect.testing.utilities import prefect_test_harness

    from emi.features.store import load_features
    from emi.paths import Layout
    from emi.stages.extract import extract
    from flows.emi_flow import dask_runner, extract_shards
    from tests.conftest import transcripts_from_script

    params = load_params(None, profile="tiny", overrides=["extract.shard_size=4", "orchestration.dask.n_workers=2"])
    assert params.extract.shard_size != load_params(None, profile="tiny").extract.shard_size

    fanned = Layout(tmp_path / "fanned")
    (fanned.raw.parent).mkdir(parents=True)
    fanned.raw.symlink_to(tiny_dataset)
    fanned.transcripts.mkdir(parents=True)
    transcripts_from_script(tiny_dataset, fanned.transcripts_table)
    with prefect_test_harness(server_startup_timeout=120):
        out = extract_shards.with_options(task_runner=dask_runner(params))(params, fanned)
    assert out["shards"] == 3
    # what DVC's extract stage then runs: every shard is found finished by its receipt
    recorded = extract(params, fanned.raw, fanned.transcripts_table, fanned.features, None, show_progress=False)
    assert recorded.shards_done_now == {"visual": 0, "audio": 0, "text": 0}
    a, b = load_features(tiny_features), load_features(fanned.features)
    assert a.ids == b.ids
    for x, y in zip([*a.visual, *a.audio], [*b.visual, *b.audio], strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.text, b.text)
