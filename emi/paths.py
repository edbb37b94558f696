"""The pipeline's folder layout, defined once: the CLI's defaults, the Prefect flow and dvc.yaml use it (a test
checks that every path dvc.yaml names is one of these)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TRANSCRIPTS_FILE = "transcripts.csv"
ALIGNED_FILE = "aligned.npz"
AUGMENTED_FILE = "augmented.npz"  # damaged copies of training clips, in aligned.npz's layout
COPIES_FILE = "copies.csv"
COPY_SEPARATOR = "~"  # a damaged copy's id: <source clip id>~<damage kind>
ALIGNMENT_FILE = "alignment.pt"  # the Stage-I model
FUSION_FILE = "model.pt"  # the Stage-II model
CHECKPOINT_FILE = "checkpoint.pt"
WORK_DIR = "work"


def work_dir(out_dir: Path) -> Path:
    """Where the stage writing ``out_dir`` keeps its resumable work (finished transcript parts, feature shards,
    training checkpoints): ``<parent>/work/<name>``, beside the output and outside every DVC output.

    DVC deletes a stage's outputs before it runs the command and restores them from its run-cache instead of
    running it; both need outputs that are not ``persist``. Work kept here survives either, so a killed or
    changed run still redoes only what is unfinished or affected.
    """
    out_dir = Path(out_dir)
    return out_dir.parent / WORK_DIR / out_dir.name


def decoded_dir(features_dir: Path) -> Path:
    """Where the clips extract decoded are kept (``emi.features.decoded``): ``<parent>/work/decoded`` beside the
    feature store, outside every DVC output (a cache keyed by content: deleting it costs a decode, never a number)."""
    return work_dir(features_dir).parent / "decoded"


@dataclass(frozen=True)
class Layout:
    """Where each stage reads and writes, under one root (the repository by default)."""

    root: Path = Path(".")

    def _at(self, rel: str) -> Path:
        return self.root / rel if self.root != Path(".") else Path(rel)

    # data
    @property
    def raw(self) -> Path:
        return self._at("data/raw")

    @property
    def transcripts(self) -> Path:
        return self._at("data/transcripts")

    @property
    def transcripts_table(self) -> Path:
        return self.transcripts / TRANSCRIPTS_FILE

    @property
    def features(self) -> Path:
        return self._at("data/features")

    @property
    def aligned(self) -> Path:
        return self._at("data/aligned")

    @property
    def aligned_file(self) -> Path:
        return self.aligned / ALIGNED_FILE

    @property
    def augmented(self) -> Path:
        return self._at("data/augmented")

    @property
    def augmented_file(self) -> Path:
        return self.augmented / AUGMENTED_FILE

    # models
    @property
    def models(self) -> Path:
        return self._at("models")

    @property
    def stage1(self) -> Path:
        return self.models / "stage1"

    @property
    def alignment_model(self) -> Path:
        return self.stage1 / ALIGNMENT_FILE

    @property
    def stage2(self) -> Path:
        return self.models / "stage2"

    @property
    def fusion_model(self) -> Path:
        return self.stage2 / FUSION_FILE

    @property
    def ablation_models(self) -> Path:
        return self.models / "ablation"

    # reports
    @property
    def reports(self) -> Path:
        return self._at("reports")

    @property
    def validation(self) -> Path:
        return self.reports / "validation"


DEFAULT = Layout()
