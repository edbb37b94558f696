import pytest


@pytest.mark.slow
def test_flow_runs_the_download_stage(tmp_path):
    from prefect.testing.utilities import prefect_test_harness

    from flows.emi_flow import emi

    with prefect_test_harness(server_startup_timeout=120):
        result = emi(params_path=str(tmp_path / "none.yaml"), profile="tiny",
                     overrides=["download.synthetic.n_clips=4"], raw_dir=str(tmp_path / "raw"),
                     reports_dir=str(tmp_path / "reports"))
    assert result["download"]["rows"] == 4
    assert (tmp_path / "reports" / "download.md").is_file()
