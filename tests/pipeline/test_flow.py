"""The Prefect side for real: the local recipe (server, pool, worker, `deployment run emi/full`) and Dask fan-out."""

import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from emi.config import load_params

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_local_recipe_runs_deployment_full_to_completed(tmp_path):
    port = free_port()
    env = {**os.environ, "EMI_PREFECT_PORT": str(port), "PREFECT_HOME": str(tmp_path / "prefect"),
           "EMI_WORK_POOL": "emi-test"}
    done = subprocess.run([str(REPO / "scripts/prefect-local.sh"), "--profile", "tiny", "--root", str(tmp_path),
                           "--timeout", "600", "--set", "download.synthetic.n_clips=8"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Completed" in done.stdout
    assert (tmp_path / "models/stage2/model.pt").is_file() and (tmp_path / "reports/ablation.md").is_file()
    with socket.socket() as s:  # the server is gone: clean shutdown
        assert s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
def test_dask_fanout_gives_the_same_features_as_one_process(tiny_dataset, tmp_path):
    from prefect.testing.utilities import prefect_test_harness

    from emi.data.store import load_features
    from emi.paths import Layout
    from emi.stages.extract import extract
    from flows.emi_flow import dask_runner, extract_flow
    from tests.conftest import transcripts_from_script

    params = load_params(None, profile="tiny", overrides=["extract.shard_size=4", "orchestration.dask.n_workers=2"])
    single = tmp_path / "single"
    extract(params, tiny_dataset, transcripts_from_script(tiny_dataset, tmp_path / "tr.csv"), single / "features",
            None, show_progress=False)

    fanned = Layout(tmp_path / "fanned")
    (fanned.raw.parent).mkdir(parents=True)
    fanned.raw.symlink_to(tiny_dataset)
    fanned.transcripts.mkdir(parents=True)
    transcripts_from_script(tiny_dataset, fanned.transcripts_table)
    with prefect_test_harness(server_startup_timeout=120):
        out = extract_flow.with_options(task_runner=dask_runner(params))(params, fanned)
    assert out["shards_done_now"] == {"visual": 3, "audio": 3, "text": 3}
    a, b = load_features(single / "features"), load_features(fanned.features)
    assert a.ids == b.ids
    for x, y in zip([*a.visual, *a.audio], [*b.visual, *b.audio], strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.text, b.text)
