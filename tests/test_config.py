from pathlib import Path

import pytest
from typer.testing import CliRunner

from emi.cli import app
from emi.config import ConfigError, flatten, load_params


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_embedded_is_the_default_profile(tmp_path):
    params = load_params(write(tmp_path, "download: {}\n"))
    assert params.profile == "embedded"
    assert params.download.source == "synthetic"
    assert params.extract.fps == 5


def test_repo_params_yaml_parses():
    params = load_params(Path(__file__).parents[1] / "params.yaml")
    assert params.download.synthetic.n_clips >= 100


def _keys(tree: dict, prefix: str = "") -> set[str]:
    return {k for key, value in tree.items()
            for k in (_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"})}


def test_repo_params_yaml_lists_every_key_and_its_nulls_are_the_profile():
    """`dvc exp run -S a.b=v` (Hydra) can only set a key the file holds: every key is listed, null = the profile."""
    import yaml

    from emi.config import params_template

    repo = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    assert _keys(repo) == _keys(params_template())
    assert load_params(Path(__file__).parents[1] / "params.yaml") == load_params(None, profile=repo["profile"])


def test_dvc_exp_run_set_param_plain_form_reaches_the_params(tmp_path):
    """What `dvc exp run -S` does to params.yaml (DVC's own Hydra override code), then what the stages read."""
    import shutil

    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    shutil.copy(Path(__file__).parents[1] / "params.yaml", path)
    apply_overrides(path, ["stage2.width=64", "download.local.path=/data/hume", "stage2.schedule.epochs=3"])
    params = load_params(path)
    assert params.stage2.width == 64 and params.stage2.schedule.epochs == 3
    assert str(params.download.local.path) == "/data/hume"
    assert params.stage2.lstm_hidden == load_params(None).stage2.lstm_hidden  # still the profile's
    assert "# Which named profile" in path.read_text()  # DVC keeps the file's comments


def test_null_in_params_yaml_is_the_profile_value_and_set_can_still_null_a_key(tmp_path):
    path = write(tmp_path, "profile: paper\nstage2: {width: null, batch_size: 8}\nextract: {visual: {pool_grid: null}}\n")
    paper = load_params(None, profile="paper")
    params = load_params(path)
    assert params.stage2.width == paper.stage2.width and params.stage2.batch_size == 8
    tiny = load_params(path, ["extract.visual.pool_grid=null"], profile="tiny")
    assert tiny.extract.visual.pool_grid is None and load_params(None, profile="tiny").extract.visual.pool_grid == 2


def test_params_template_command_prints_a_loadable_file(tmp_path):
    out = CliRunner().invoke(app, ["params", "template", "--profile", "tiny"])
    assert out.exit_code == 0, out.output
    assert load_params(write(tmp_path, out.output)) == load_params(None, profile="tiny")
    assert CliRunner().invoke(app, ["params", "template", "--profile", "nope"]).exit_code == 2


def test_paper_profile_has_the_papers_settings(tmp_path):
    p = load_params(write(tmp_path, "profile: paper\n"))
    assert p.extract.fps == 5
    assert (p.extract.visual.name, p.extract.visual.pretrained, p.extract.visual.dim) == ("ViT-B-16", "openai", 768)
    assert p.extract.audio.name.startswith("facebook/wav2vec2-large") and p.extract.audio.dim == 1024
    assert p.transcribe.asr.name == "large-v3-turbo"
    assert (p.extract.text.name, p.extract.text.dim) == ("bert-base-uncased", 768)
    s = p.stage1.schedule
    assert (s.lr_max, s.lr_min, s.cycle_epochs, s.epochs) == (1e-5, 1e-7, 10, 50)
    assert p.stage2.ema_decay == 0.999
    assert not p.extract.visual.allow_random_init


def test_paper_keeps_the_projects_additions_off_and_paper_plus_takes_augmentation_over_the_papers_settings():
    paper, plus = load_params(None, profile="paper"), load_params(None, profile="paper+")
    assert paper.stage2.augment.fraction == 0 and paper.stage2.augment.modality_dropout == 0
    assert not paper.stage2.reliability_cues
    assert plus.stage2.augment.fraction > 0 and plus.stage2.augment.modality_dropout > 0
    # everything else is the paper's (reliability cues measured worse on the embedded data: off in both)
    strip = {"stage2": {"augment"}}
    assert plus.model_dump(exclude=strip | {"profile": True}) == paper.model_dump(exclude=strip | {"profile": True})


def test_params_file_overrides_profile_and_set_overrides_file(tmp_path):
    path = write(tmp_path, "download:\n  synthetic:\n    n_clips: 40\n")
    assert load_params(path).download.synthetic.n_clips == 40
    assert load_params(path, ["download.synthetic.n_clips=50"]).download.synthetic.n_clips == 50
    assert load_params(path, profile="tiny").download.synthetic.n_clips == 40


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    path = write(tmp_path, "download:\n  synthetic:\n    n_clip: 40\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    msg = str(err.value)
    assert "download.synthetic.n_clip: unknown key" in msg
    assert "did you mean download.synthetic.n_clips" in msg
    assert str(path) in msg


def test_wrong_type_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_params(write(tmp_path, "download:\n  synthetic:\n    n_clips: many\n"))
    assert "download.synthetic.n_clips" in str(err.value) and "'many'" in str(err.value)


def test_invalid_values_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="split fractions add up"):
        load_params(write(tmp_path, "download:\n  synthetic:\n    splits: {train: 0.9, valid: 0.2, test: 0.0}\n"))
    with pytest.raises(ConfigError, match="latent_correlation key"):
        load_params(write(tmp_path, "download:\n  synthetic:\n    latent_correlation: {'Joy~Anger': 0.3}\n"))
    with pytest.raises(ConfigError, match="download.source"):
        load_params(write(tmp_path, "download: {source: ftp}\n"))


def test_unknown_profile_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile 'papers'.*embedded, paper"):
        load_params(write(tmp_path, "profile: papers\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(write(tmp_path, "download: [\n"))


def test_flatten_gives_dotted_keys(tiny_params):
    flat = flatten(tiny_params)
    assert flat["download.synthetic.n_clips"] == 12
    assert flat["stage2.schedule.epochs"] == 2


def test_cli_reports_config_errors_with_exit_code_2(tmp_path):
    path = write(tmp_path, "download: {sourse: synthetic}\n")
    result = CliRunner().invoke(app, ["params", "show", "--params", str(path)])
    assert result.exit_code == 2
    assert "download.sourse: unknown key" in result.output


def test_cli_lists_stages_and_documents_download_options():
    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0 and "download" in top.output
    help_text = runner.invoke(app, ["download", "--help"], terminal_width=200).output
    for option in ("--params", "--profile", "--set", "--out", "--reports", "--source", "--local-path", "--url",
                   "--sha256", "--n-clips", "--seed", "--max-error-fraction"):
        assert option in help_text


def test_data_section_holds_the_shared_clip_contract(tmp_path):
    p = load_params(write(tmp_path, "data: {max_error_fraction: 0.25, silence_dbfs: -70}\n"))
    assert (p.data.max_error_fraction, p.data.silence_dbfs) == (0.25, -70.0)
    assert p.data.min_duration_s < p.data.max_duration_s
    for removed in ("download:\n  validation: {max_error_fraction: 0.1}\n", "extract: {silence_dbfs: -70}\n"):
        with pytest.raises(ConfigError, match="unknown key"):  # moved to data.*
            load_params(write(tmp_path, removed))
    with pytest.raises(ConfigError, match="min_duration_s"):
        load_params(write(tmp_path, "data: {min_duration_s: 9, max_duration_s: 3}\n"))


def test_stage2_width_must_divide_into_the_heads(tmp_path):
    with pytest.raises(ConfigError, match="divisible by transformer_heads"):
        load_params(write(tmp_path, "stage2: {width: 10, transformer_heads: 4}\n"))
