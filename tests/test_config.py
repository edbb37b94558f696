"""The configuration: params.yaml holds every value a run uses (written from a named profile), parsed once into
typed objects; errors name the key, the file and the closest known key."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from emi.cli import app
from emi.config import UNTRACKED, ConfigError, Params, flatten, leaf_keys, load_params
from emi.params_yaml import render, set_values, use

REPO = Path(__file__).parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_the_repo_params_yaml_is_emi_params_use_embedded_byte_for_byte(tmp_path):
    committed = (REPO / "params.yaml").read_text()
    assert render(load_params(None, profile="embedded")) == committed
    out = CliRunner().invoke(app, ["params", "use", "embedded", "--params", str(tmp_path / "params.yaml")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "params.yaml").read_text() == committed
    assert load_params(REPO / "params.yaml") == load_params(None, profile="embedded")


def test_params_yaml_shows_every_key_with_its_value_and_its_meaning():
    text = (REPO / "params.yaml").read_text()
    data = yaml.safe_load(text)
    # every key with the value the stages read (no null standing for "the profile's value")
    assert data == load_params(None, profile="embedded").model_dump(mode="json")
    assert "  width: 128  # shared width W of the mapped modalities" in text
    for name, field in Params.model_fields.items():  # every key documented, the description as its comment
        assert field.description, name
    assert all(field.description for model in _models(Params) for field in model.model_fields.values())


def _models(model) -> list:
    out = [model]
    for field in model.model_fields.values():
        if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields"):
            out += _models(field.annotation)
    return out


def test_every_profile_writes_a_file_that_reads_back_as_itself(tmp_path):
    for name in ("embedded", "paper", "paper+", "tiny"):
        params = use(name, path=tmp_path / f"{name}.yaml")
        assert load_params(tmp_path / f"{name}.yaml") == params and params.profile == name


def test_use_with_set_switches_to_the_licensed_data_and_set_changes_values_in_place(tmp_path):
    path = tmp_path / "params.yaml"
    use("paper", ["download.local.path=/data/Hume-Vidmimic2"], path)
    params = load_params(path)
    assert params.profile == "paper" and str(params.download.local.path) == "/data/Hume-Vidmimic2"
    assert params.extract.visual.name == "ViT-B-16"
    set_values(["stage2.width=64", "stage2.modalities=[V, A]"], path)
    changed = load_params(path)
    assert changed.stage2.width == 64 and changed.stage2.modalities == ("V", "A")
    assert changed.download.local.path == params.download.local.path  # the rest as it was
    with pytest.raises(ConfigError, match="stage2.nope: unknown key"):
        set_values(["stage2.nope=1"], path)


def test_dvc_exp_run_set_changes_that_line_alone(tmp_path):
    """What `dvc exp run -S` does to params.yaml (DVC's own Hydra override code): the one line of the key."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    apply_overrides(path, ["stage2.width=64", "download.local.path=/data/hume"])
    before, after = (REPO / "params.yaml").read_text().splitlines(), path.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(before) == len(after) and [b.split("#")[0].strip() for _, b in changed] == [
        "path: /data/hume", "width: 64"]
    params = load_params(path)
    assert params.stage2.width == 64 and str(params.download.local.path) == "/data/hume"


def test_a_params_file_missing_keys_says_how_to_write_a_complete_one(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_params(write(tmp_path, "profile: paper\nstage2: {width: 64}\n"))
    assert "stage1: required key is missing" in str(err.value)
    assert "emi params use paper" in str(err.value)


def test_profile_is_provenance_not_a_value_to_set(tmp_path):
    with pytest.raises(ConfigError, match="not a value to set"):
        load_params(None, ["profile=paper"])


def test_overrides_win_over_the_file_and_a_profile_replaces_it(tmp_path):
    path = tmp_path / "params.yaml"
    use("embedded", ["download.synthetic.n_clips=40"], path)
    assert load_params(path).download.synthetic.n_clips == 40
    assert load_params(path, ["download.synthetic.n_clips=50"]).download.synthetic.n_clips == 50
    assert load_params(path, profile="tiny").download.synthetic.n_clips == 12  # the profile's values, not the file's
    assert load_params(None, ["extract.visual.pool_grid=null"], profile="tiny").extract.visual.pool_grid is None


def test_paper_profile_has_the_papers_settings():
    p = load_params(None, profile="paper")
    assert p.extract.fps == 5
    assert (p.extract.visual.name, p.extract.visual.pretrained, p.extract.visual.dim) == ("ViT-B-16", "openai", 768)
    assert p.extract.audio.name.startswith("facebook/wav2vec2-large") and p.extract.audio.dim == 1024
    assert p.transcribe.asr.name == "large-v3-turbo"
    assert (p.extract.text.name, p.extract.text.dim) == ("bert-base-uncased", 768)
    s = p.stage1.schedule
    assert (s.lr_max, s.lr_min, s.cycle_epochs, s.epochs) == (1e-5, 1e-7, 10, 50)
    assert p.stage2.ema_decay == 0.999
    assert not p.extract.visual.allow_random_init


def test_paper_keeps_the_projects_additions_off_and_paper_plus_takes_them_over_the_papers_settings():
    paper, plus = load_params(None, profile="paper"), load_params(None, profile="paper+")
    assert paper.stage2.augment.fraction == 0 and paper.stage2.augment.modality_dropout == 0
    assert not paper.stage2.reliability_cues and paper.stage2.fusion == "quality"
    assert plus.stage2.augment.fraction > 0 and plus.stage2.augment.modality_dropout > 0
    assert plus.stage2.fusion == "quality"  # gated fusion never won on the held-back datasets
    # everything else is the paper's (reliability cues measured worse on the embedded data: off in both)
    strip = {"stage2": {"augment"}}
    assert plus.model_dump(exclude=strip | {"profile": True}) == paper.model_dump(exclude=strip | {"profile": True})


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    path = tmp_path / "params.yaml"
    use("tiny", path=path)
    path.write_text(path.read_text().replace("    n_clips: 12", "    n_clip: 12"))
    with pytest.raises(ConfigError) as err:
        load_params(path)
    msg = str(err.value)
    assert "download.synthetic.n_clip: unknown key" in msg
    assert "did you mean download.synthetic.n_clips" in msg
    assert str(path) in msg


def test_wrong_types_and_impossible_values_are_clear_errors():
    with pytest.raises(ConfigError) as err:
        load_params(None, ["download.synthetic.n_clips=many"])
    assert "download.synthetic.n_clips" in str(err.value) and "'many'" in str(err.value)
    with pytest.raises(ConfigError, match="split fractions add up"):
        load_params(None, ["download.synthetic.splits={train: 0.9, valid: 0.2, test: 0.0}"])
    with pytest.raises(ConfigError, match="latent_correlation key"):
        load_params(None, ["download.synthetic.latent_correlation={'Joy~Anger': 0.3}"])
    with pytest.raises(ConfigError, match="download.source"):
        load_params(None, ["download.source=ftp"])
    with pytest.raises(ConfigError, match="divisible by transformer_heads"):
        load_params(None, ["stage2.width=10", "stage2.transformer_heads=4"])
    with pytest.raises(ConfigError, match="min_duration_s"):
        load_params(None, ["data.min_duration_s=9", "data.max_duration_s=3"])


def test_unknown_profile_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile 'papers'.*embedded, paper"):
        load_params(None, profile="papers")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(write(tmp_path, "download: [\n"))


def test_flatten_gives_dotted_keys(tiny_params):
    flat = flatten(tiny_params)
    assert flat["download.synthetic.n_clips"] == 12
    assert flat["stage2.schedule.epochs"] == 2


def test_untracked_keys_exist():
    sections = {k.rsplit(".", 1)[0] for k in leaf_keys()} | {k.split(".")[0] for k in leaf_keys()}
    assert all(u in set(leaf_keys()) | sections for u in UNTRACKED)


def test_cli_reports_config_errors_with_exit_code_2(tmp_path):
    result = CliRunner().invoke(app, ["params", "show", "--profile", "tiny", "--set", "download.sourse=synthetic"])
    assert result.exit_code == 2
    assert "download.sourse: unknown key" in result.output
    assert CliRunner().invoke(app, ["params", "use", "nope", "--params", str(tmp_path / "p.yaml")]).exit_code == 2


def test_cli_lists_stages_and_documents_download_options():
    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0 and "download" in top.output
    help_text = runner.invoke(app, ["download", "--help"], terminal_width=200).output
    for option in ("--params", "--profile", "--set", "--out", "--reports", "--source", "--local-path", "--url",
                   "--sha256", "--n-clips", "--seed", "--max-error-fraction"):
        assert option in help_text


def test_data_section_holds_the_shared_clip_contract():
    p = load_params(None, ["data.max_error_fraction=0.25", "data.silence_dbfs=-70"])
    assert (p.data.max_error_fraction, p.data.silence_dbfs) == (0.25, -70.0)
    assert p.data.min_duration_s < p.data.max_duration_s
    for removed in ("download.validation.max_error_fraction=0.1", "extract.silence_dbfs=-70"):
        with pytest.raises(ConfigError, match="unknown key"):  # moved to data.*
            load_params(None, [removed])
