"""The pipeline's folder layout: one root, or the repository-relative default."""

from pathlib import Path

from emi.paths import DEFAULT, Layout

PROPERTIES = ("raw", "transcripts", "transcripts_table", "features", "aligned", "aligned_file", "models", "stage1",
              "alignment_model", "stage2", "fusion_model", "ablation_models", "reports", "validation")


def test_layout_puts_everything_under_its_root(tmp_path):
    layout = Layout(tmp_path / "run")
    for name in PROPERTIES:
        path = getattr(layout, name)
        assert path.is_relative_to(tmp_path / "run"), f"{name} = {path} escapes the root"
    assert layout.raw == tmp_path / "run" / "data" / "raw"
    assert layout.transcripts_table == tmp_path / "run" / "data" / "transcripts" / "transcripts.csv"
    assert layout.aligned_file == tmp_path / "run" / "data" / "aligned" / "aligned.npz"
    assert layout.fusion_model == tmp_path / "run" / "models" / "stage2" / "model.pt"
    assert layout.validation == tmp_path / "run" / "reports" / "validation"
    assert len({getattr(layout, name) for name in PROPERTIES}) == len(PROPERTIES), "two places share a path"


def test_default_layout_is_relative_to_the_working_directory():
    assert DEFAULT == Layout()
    for name in PROPERTIES:
        assert not getattr(DEFAULT, name).is_absolute(), name
    assert DEFAULT.raw == Path("data/raw") and DEFAULT.models == Path("models") and DEFAULT.reports == Path("reports")
    assert Layout(Path(".")).features == Path("data/features")
