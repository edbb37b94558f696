"""`emi bench project`: stage times fitted per unit they grow with and read at Hume-Vidmimic2's split sizes."""

import json
from pathlib import Path

import pytest

from emi.bench.project import (HUME_SPLITS, bench_project, fit, packaged_tokenizer, projection, projection_markdown,
                                trainings, units, without_hub)
from emi.bench.scale import StageRun, gpu_samples
from emi.config import load_params
from tests.conftest import EMI

REPO = Path(__file__).resolve().parents[2]


def test_nvidia_smi_samples_give_the_busy_share_and_the_peak_memory():
    assert gpu_samples("40, 1000\n60, 3000\n[Not Supported], 5\n\n") == (0.5, 3000.0)
    assert gpu_samples("") == (None, None)


def test_each_stage_grows_with_its_own_unit():
    p = load_params(None, profile="paper")  # 50 epochs in both stages, the ablation grid x 3 seeds
    splits = {"train": 10, "valid": 4, "test": 6}
    assert units("extract", p, splits) == 20 and units("evaluate", p, splits) == 4
    assert units("stage1", p, splits) == 10 * p.stage1.schedule.epochs
    assert units("stage2", p, splits) == 10 * 50
    assert units("ablate", p, splits) == 10 * 50 * trainings(p) and trainings(p) % p.evaluate.seeds == 0
    # a length in optimizer steps draws the same clips whatever the data size
    e = load_params(None, profile="embedded")
    assert units("stage2", e, splits) == units("stage2", e, HUME_SPLITS) == 360 * e.stage2.batch_size


def test_fit_never_projects_less_work_as_faster():
    assert fit([10, 20], [12, 22]) == pytest.approx((2.0, 1.0))
    assert fit([10, 20], [22, 12]) == (17.0, 0.0)  # noise between two sizes: the mean, not a negative slope
    assert fit([5, 5], [3, 5]) == (4.0, 0.0)


def test_projection_reads_the_fits_at_the_real_split_sizes():
    p = load_params(None, profile="paper")
    splits = {100: {"train": 60, "valid": 20, "test": 20}, 200: {"train": 120, "valid": 40, "test": 40}}
    runs = [StageRun(n, "extract", 5 + 0.1 * n, 900, 0.4, 2000.0, n / 10) for n in (100, 200)]
    runs += [StageRun(n, "stage1", 3 + 0.002 * splits[n]["train"] * p.stage1.schedule.epochs, 1500, None, None, 1.0)
             for n in (100, 200)]
    proj = projection(runs, p, splits)
    ext, st1 = proj["stages"]["extract"], proj["stages"]["stage1"]
    assert ext["projected_s"] == pytest.approx(5 + 0.1 * 17_246, abs=0.1) and ext["gpu_busy"] == 0.4
    assert st1["projected_s"] == pytest.approx(3 + 0.002 * 8072 * p.stage1.schedule.epochs, abs=0.1)
    assert proj["projected_total_s"] == pytest.approx(ext["projected_s"] + st1["projected_s"])
    lines = projection_markdown(proj)
    assert lines[2].startswith("| extract | clips | 15.0 / 25.0 |") and "40 %" in lines[2]
    assert lines[-1].startswith("| **total** |")


def test_without_the_hub_the_hubs_encoders_keep_their_shapes_and_the_asr_is_the_packaged_one(tmp_path):
    embedded = load_params(None, profile="embedded")
    assert without_hub(embedded, tmp_path) == (embedded, {})  # nothing of the embedded default needs the hub
    # the paper profile with its text encoder given as a local folder: that one is kept
    paper = load_params(None, profile="paper", overrides=[f"extract.text.path={packaged_tokenizer()}"])
    params, replaced = without_hub(paper, tmp_path)
    assert set(replaced) == {"extract.visual", "extract.audio", "transcribe.asr"} and "lower bound" in \
        replaced["transcribe.asr"]
    for role in ("visual", "audio"):  # the same name, width and kind: open_clip and Wav2Vec2 build it by name
        spec, was = getattr(params.extract, role), getattr(paper.extract, role)
        assert (spec.pretrained, spec.allow_random_init) == ("random", True)
        assert (spec.kind, spec.name, spec.dim) == (was.kind, was.name, was.dim)
    assert params.extract.text == paper.extract.text and params.transcribe.asr == embedded.transcribe.asr
    assert params.stage1 == paper.stage1 and params.stage2 == paper.stage2 and not list(tmp_path.iterdir())
    whisper_audio = load_params(None, profile="paper", overrides=["extract.audio.kind=whisper-encoder",
                                                                  "extract.audio.name=large-v3"])
    with pytest.raises(ValueError, match="extract.audio: whisper-encoder 'large-v3' comes from the hub and has no "
                                         "stand-in without it; set extract.audio.path"):
        without_hub(whisper_audio, tmp_path)


def test_a_projection_on_datasets_that_are_not_there_says_how_to_make_them(tmp_path):
    params = load_params(None, profile="tiny")
    with pytest.raises(ValueError, match=r"no dataset at .*n4, .*n8: make them with `emi bench project --prepare "
                                         r".*--clips 4,8` \(same profile\)"):
        bench_project(params, [8, 4], tmp_path / "w", REPO / "dvc.yaml", data=tmp_path / "elsewhere")


def test_sizes_too_small_to_evaluate_are_refused_before_any_stage_runs(tmp_path):
    from emi.config import SPLIT_HEADER

    for n, valid in ((4, 1), (6, 2)):  # split files only: the check reads them before any stage
        (tmp_path / f"n{n}").mkdir()
        for split, rows in (("train", n - valid - 1), ("valid", valid), ("test", 1)):
            (tmp_path / f"n{n}" / f"{split}_split.csv").write_text(
                "\n".join([",".join(SPLIT_HEADER), *[f"{i:05d}" + ",0.5" * 6 for i in range(rows)]]) + "\n")
    params = load_params(None, profile="tiny")
    with pytest.raises(ValueError, match=r"validation clips per size \(4 clips: 1\): evaluate needs 2 or more"):
        bench_project(params, [4, 6], tmp_path / "w", REPO / "dvc.yaml", data=tmp_path)
    assert not (tmp_path / "w").exists()


@pytest.mark.slow  # a BERT-base: 110 M parameters written and read back
def test_a_random_bert_has_the_named_shape_and_the_given_tokenizer(tmp_path):
    import torch

    from emi.encoders.base import EncoderError
    from emi.encoders.text import load_text, save_random_bert

    folder = save_random_bert("bert-base-uncased", packaged_tokenizer(), tmp_path / "bert", seed=0)
    spec = load_params(None, profile="paper").extract.text.model_copy(update={"path": folder})
    enc = load_text(spec, torch.device("cpu"), torch.float32)
    assert enc.dim == 768 and enc.model.config.num_hidden_layers == 12
    assert enc.encode(["his face was comical", "oh no"]).shape == (2, 768)
    with pytest.raises(EncoderError, match="no shape known for 'roberta-large' without the hub"):
        save_random_bert("roberta-large", packaged_tokenizer(), tmp_path / "other", seed=0)
    with pytest.raises(EncoderError, match="not a BERT tokenizer folder"):
        save_random_bert("bert-base-uncased", tmp_path, tmp_path / "other", seed=0)


@pytest.mark.slow  # also `emi bench scale`'s run of the stages, as their own processes
def test_bench_project_runs_the_stages_at_two_sizes_on_prepared_datasets_and_writes_the_projection(tmp_path):
    import subprocess

    out, prepared = tmp_path / "project.json", tmp_path / "prepared"
    common = ["--profile", "tiny", "--clips", "8,4"]
    # made where ffmpeg and espeak-ng are, measured where they may not be
    proc = subprocess.run([EMI, "bench", "project", *common, "--prepare", str(prepared)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in prepared.iterdir()) == ["bert-tokenizer", "n4", "n8"]
    proc = subprocess.run([EMI, "bench", "project", *common, "--data", str(prepared), "--work", str(tmp_path / "w"),
                           "--dvc-yaml", str(REPO / "dvc.yaml"), "--out", str(out),
                           "--stages", "download,transcribe,extract"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["commit"] != "nogit" and result["profile"] == "tiny"
    assert result["replaced_without_hub"] == {} and result["data"] == str(prepared)
    assert list(result["stages"]) == ["download", "transcribe", "extract"]
    assert result["projected_total_s"] == pytest.approx(sum(s["projected_s"] for s in result["stages"].values()))
    assert all(s["projected_s"] > 0 and s["disk_mb"] > 0 and s["gpu_busy"] is None for s in result["stages"].values())
    for n in (4, 8):  # each size generated with its own clips, split by person, read as a user's local copy
        assert sum(result["sizes"][str(n)].values()) == n
        raw = tmp_path / "w" / f"n{n}" / "data/raw"
        assert sum(len((raw / f"{s}_split.csv").read_text().splitlines()) - 1 for s in ("train", "valid", "test")) == n
        source = json.loads((raw / "_source.json").read_text())
        assert source["source"] == "local" and source["path"] == str(prepared / f"n{n}")
    assert [(r["clips"], r["stage"]) for r in result["runs"]][:3] == [(4, "download"), (4, "transcribe"),
                                                                       (4, "extract")]
    assert all(r["peak_rss_mb"] > 50 for r in result["runs"])  # each stage its own measured process
    assert "| **total** |" in proc.stdout
