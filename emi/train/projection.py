"""Stage I at inference (paper section 3.3): the frozen heads and the encoder-feature standardization a Stage-I
model carries, projecting a clip's features with them, and composing Stage II's inputs (aligned, encoder or both);
the aligned sequences on disk (``aligned.npz``), with the clips' reliability cues as extracted (never projected).
Training is ``emi.train.alignment``."""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from emi.config import MODALITIES, MODALITY_KEYS, Stage1Params
from emi.data.sequences import Joined, Ragged
from emi.model import AlignmentModel
from emi.data.sequences import SequenceData
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


VIEWS = ("aligned", "encoder")
CUE_MODALITIES = ("visual", "audio")  # the modalities with per-step reliability cues (emi.features.cues.CUES)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the same inputs give the same bytes


def write_aligned(model: AlignmentModel, norm: dict, data: SequenceData, splits: list[str], path: Path) -> Path:
    """Both views of every clip into one ``.npz`` (np.load reads it), written clip by clip: the sequences go to
    temporary ``.npy`` files first and are then copied into the archive, so memory holds one clip, not the set."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(data)
    if n == 0:
        raise ValueError(f"{path}: no clip to project")
    lengths = np.zeros(n, np.int64)
    texts: dict[str, list[np.ndarray]] = {view: [] for view in VIEWS}
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".aligned-") as tmp, ExitStack() as files:
        sinks: dict[str, tuple[Path, object, int]] = {}
        for i in range(n):
            v, a = data.visual[i], data.audio[i]
            if v.shape[0] != a.shape[0]:
                raise ValueError(f"{data.ids[i]}: {v.shape[0]} visual but {a.shape[0]} audio steps")
            lengths[i] = v.shape[0]
            views = project_clip(model, norm, v, a, data.text[i])
            for view in VIEWS:
                texts[view].append(views[view]["T"].astype(np.float32))
                for m, key in (("visual", "V"), ("audio", "A")):
                    _sink(sinks, files, tmp, f"{view}_{m}", views[view][key])
            for m in CUE_MODALITIES if data.cues is not None else ():
                cues = data.cues[m][i]
                if cues.shape[0] != lengths[i]:
                    raise ValueError(f"{data.ids[i]}: {cues.shape[0]} rows of {m} cues for {lengths[i]} steps")
                _sink(sinks, files, tmp, f"cues_{m}", cues)
        for _, fh, _ in sinks.values():
            fh.close()
        total = int(lengths.sum())
        small = {"ids": np.array(data.ids), "splits": np.array(splits), "mask": np.ascontiguousarray(data.mask),
                 "lengths": lengths}
        with atomic_path(path) as out, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
            for name, array in small.items():
                _write_member(zf, name, array)
            for view in VIEWS:
                for m in ("visual", "audio"):
                    file, _, dim = sinks[f"{view}_{m}"]
                    _write_member(zf, f"{view}_{m}", file, shape=(total, dim))
                _write_member(zf, f"{view}_text", np.stack(texts[view]))
            for m in CUE_MODALITIES if data.cues is not None else ():
                file, _, dim = sinks[f"cues_{m}"]
                _write_member(zf, f"cues_{m}", file, shape=(total, dim))
    return path


def _sink(sinks: dict, files: ExitStack, tmp: str, name: str, rows: np.ndarray) -> None:
    """Append one clip's rows to the raw float32 file of member ``name`` (opened on first use)."""
    x = np.ascontiguousarray(rows, dtype=np.float32)
    if name not in sinks:
        file = Path(tmp) / f"{name}.bin"
        sinks[name] = (file, files.enter_context(open(file, "wb")), x.shape[1])
    sinks[name][1].write(x.tobytes())


def _write_member(zf: zipfile.ZipFile, name: str, source: np.ndarray | Path,
                  shape: tuple[int, ...] | None = None) -> None:
    """One ``.npy`` member: an array, or float32 rows of ``shape`` streamed from a raw file."""
    info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
    with zf.open(info, "w", force_zip64=True) as dst:
        if isinstance(source, np.ndarray):
            np.lib.format.write_array(dst, source, allow_pickle=False)
            return
        np.lib.format.write_array_header_2_0(dst, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                   "fortran_order": False, "shape": shape})
        with open(source, "rb") as src:
            shutil.copyfileobj(src, dst, 1 << 20)


def compose(view: dict[str, np.ndarray], inputs: str) -> dict[str, np.ndarray]:
    """Stage II's input per modality: aligned, encoder, or both concatenated along features."""
    if inputs == "both":
        return {m: np.concatenate([view[f"aligned_{m}"], view[f"encoder_{m}"]], axis=-1) for m in MODALITIES}
    return {m: view[f"{inputs}_{m}"] for m in MODALITIES}


def load_aligned(path: Path, inputs: str = "aligned") -> tuple[SequenceData, list[str]]:
    """Stage II's inputs for every clip of the file; the sequences stay in the file until a batch reads them."""
    views = VIEWS if inputs == "both" else (inputs,)
    with np.load(path, allow_pickle=False) as z:
        ids, splits, lengths, mask = [str(i) for i in z["ids"]], [str(s) for s in z["splits"]], z["lengths"], z["mask"]
        text = np.concatenate([z[f"{view}_text"] for view in views], axis=-1)
        has_cues = all(f"cues_{m}" in z.files for m in CUE_MODALITIES)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rows = [(0, int(s), int(n)) for s, n in zip(starts, lengths)]
    seqs = {m: [Ragged.from_npz([path], f"{view}_{m}", rows) for view in views] for m in ("visual", "audio")}
    visual, audio = ((Joined(seqs[m]) if len(views) > 1 else seqs[m][0]) for m in ("visual", "audio"))
    cues = {m: Ragged.from_npz([path], f"cues_{m}", rows) for m in CUE_MODALITIES} if has_cues else None
    return SequenceData(ids, visual, audio, text, mask, None, cues), splits


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


def aligned_inputs(raw: SequenceData, alignment_path: Path | tuple[AlignmentModel, dict], inputs: str) -> SequenceData:
    """Stage II's inputs for clips encoded outside the feature store (predict, robustness): the Stage-I projections
    and standardized encoder features, composed the way Stage II was trained. ``alignment_path`` may also be what
    ``load_alignment`` returned (callers that project chunk after chunk load it once)."""
    alignment, norm = (load_alignment(alignment_path) if isinstance(alignment_path, str | Path)
                       else alignment_path)
    vs, as_, ts = [], [], []
    for i in range(len(raw)):
        views = project_clip(alignment, norm, raw.visual[i], raw.audio[i], raw.text[i])
        flat = {f"{view}_{m}": views[view][MODALITY_KEYS[m]] for view in ("aligned", "encoder") for m in MODALITIES}
        x = compose(flat, inputs)
        vs.append(x["visual"].astype(np.float32))
        as_.append(x["audio"].astype(np.float32))
        ts.append(x["text"].astype(np.float32))
    return SequenceData(raw.ids, vs, as_, np.stack(ts), raw.mask.copy(), None, raw.cues)
