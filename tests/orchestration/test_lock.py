"""``emi.orchestration.lock``: one pipeline run per checkout."""

from __future__ import annotations

import time

import pytest

from emi.orchestration.dvc import PipelineError
from emi.orchestration.lock import pipeline_lock


def test_a_second_pipeline_run_on_one_checkout_waits_then_stops_naming_the_first(tmp_path):
    (tmp_path / ".dvc").mkdir()
    with pipeline_lock(tmp_path, 0, {"flow run": "first-run"}):
        started = time.monotonic()
        with pytest.raises(PipelineError, match=r"another pipeline run holds this checkout \(flow run first-run, "
                                                r"pid \d+.*waited 1 s"):
            with pipeline_lock(tmp_path, 1.0, {"flow run": "second-run"}):
                pass
        assert time.monotonic() - started >= 1.0
    with pipeline_lock(tmp_path, 0, {"flow run": "third-run"}):  # released: the next run gets it at once
        pass


def test_the_run_a_checkout_is_held_for_may_use_it_and_no_other_run_may(tmp_path):
    # a pooled stage whose worker shares the flow's checkout works for the holder, which waits for it
    (tmp_path / ".dvc").mkdir()
    with pipeline_lock(tmp_path, 0, {"flow run": "flow-1"}):
        with pipeline_lock(tmp_path, 0, {"flow run": "stage-of-flow-1"}, inside="flow-1"):
            pass
        with pytest.raises(PipelineError, match="flow run flow-1"):
            with pipeline_lock(tmp_path, 0, {"flow run": "stage-of-flow-2"}, inside="flow-2"):
                pass
    with pipeline_lock(tmp_path, 0, {"flow run": "stage"}, inside="flow-1"):  # not held: taken as usual
        assert (tmp_path / ".dvc/tmp/emi-pipeline.json").is_file()
