"""Stage I at inference (paper section 3.3): the frozen heads and the encoder-feature standardization a Stage-I
model carries, projecting a clip's features with them, and composing Stage II's inputs (aligned, encoder or both);
the aligned sequences on disk (``aligned.npz``). Training is ``emi.train.alignment``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from emi.config import MODALITIES, MODALITY_KEYS, Stage1Params
from emi.model import AlignmentModel
from emi.train.loop import SequenceData
from emi.utils import atomic_path


@torch.no_grad()
def project_clip(model: AlignmentModel, norm: dict, v: np.ndarray, a: np.ndarray, t: np.ndarray) -> dict:
    """Both views of one clip: the frozen Stage-I heads per timestep (aligned) and the standardized encoder
    features (encoder)."""
    model.eval()
    aligned = {"V": model.project("V", torch.from_numpy(v)).numpy(), "A": model.project("A", torch.from_numpy(a)).numpy(),
               "T": model.project("T", torch.from_numpy(t)).numpy()}
    encoder = {m: (x - norm[m][0]) / norm[m][1] for m, x in (("V", v), ("A", a), ("T", t))}
    return {"aligned": aligned, "encoder": encoder}


def write_aligned(model: AlignmentModel, norm: dict, data: SequenceData, splits: list[str], path: Path) -> Path:
    views = [project_clip(model, norm, data.visual[i], data.audio[i], data.text[i]) for i in range(len(data))]
    arrays = {"ids": np.array(data.ids), "splits": np.array(splits), "mask": data.mask,
              "lengths": np.array([data.visual[i].shape[0] for i in range(len(data))], np.int64)}
    for view in ("aligned", "encoder"):
        arrays[f"{view}_visual"] = np.concatenate([c[view]["V"] for c in views]).astype(np.float32)
        arrays[f"{view}_audio"] = np.concatenate([c[view]["A"] for c in views]).astype(np.float32)
        arrays[f"{view}_text"] = np.stack([c[view]["T"] for c in views]).astype(np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return path


def compose(view: dict[str, np.ndarray], inputs: str) -> dict[str, np.ndarray]:
    """Stage II's input per modality: aligned, encoder, or both concatenated along features."""
    if inputs == "both":
        return {m: np.concatenate([view[f"aligned_{m}"], view[f"encoder_{m}"]], axis=-1) for m in MODALITIES}
    return {m: view[f"{inputs}_{m}"] for m in MODALITIES}


def load_aligned(path: Path, inputs: str = "aligned") -> tuple[SequenceData, list[str]]:
    with np.load(path, allow_pickle=False) as z:
        ids, splits, lengths = [str(i) for i in z["ids"]], [str(s) for s in z["splits"]], z["lengths"]
        x = compose({k: z[k] for k in z.files}, inputs)
        cuts = np.cumsum(lengths)[:-1]
        return SequenceData(ids, np.split(x["visual"], cuts), np.split(x["audio"], cuts), x["text"], z["mask"],
                            None), splits


def load_tuned_encoders(path: Path) -> dict | None:
    """The fine-tuned encoder blocks a Stage-I model carries (None when only its heads were trained)."""
    return torch.load(path, map_location="cpu", weights_only=True).get("tuned_encoders")


def load_alignment(path: Path) -> tuple[AlignmentModel, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The frozen Stage-I heads and the encoder-feature standardization fitted on the training split."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = AlignmentModel.from_params(Stage1Params.model_validate(state["params"]), state["dims"])
    model.load_state_dict(state["model"])
    norm = {m: (mu.numpy(), sd.numpy()) for m, (mu, sd) in state["norm"].items()}
    return model.eval(), norm


def aligned_inputs(raw: SequenceData, alignment_path: Path, inputs: str) -> SequenceData:
    """Stage II's inputs for clips encoded outside the feature store (predict, robustness): the Stage-I projections
    and standardized encoder features, composed the way Stage II was trained."""
    alignment, norm = load_alignment(alignment_path)
    vs, as_, ts = [], [], []
    for i in range(len(raw)):
        views = project_clip(alignment, norm, raw.visual[i], raw.audio[i], raw.text[i])
        flat = {f"{view}_{m}": views[view][MODALITY_KEYS[m]] for view in ("aligned", "encoder") for m in MODALITIES}
        x = compose(flat, inputs)
        vs.append(x["visual"].astype(np.float32))
        as_.append(x["audio"].astype(np.float32))
        ts.append(x["text"].astype(np.float32))
    return SequenceData(raw.ids, vs, as_, np.stack(ts), raw.mask.copy(), None)
