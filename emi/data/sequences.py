"""Per-clip sequences as the models read them: ``SequenceData`` (ids, visual and audio sequences on the 5 fps grid,
one text vector, modality masks, labels, reliability cues) and the on-disk sequences it may hold, read one clip at
a time (``Ragged`` from uncompressed ``.npz`` files, and views over them), so memory holds a batch, not a dataset.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where batches are made: reading stores and fingerprints stays light
    import torch
    from torch import Tensor


def npz_arrays(path: Path) -> dict[str, tuple[int, np.dtype, tuple[int, ...], bool]]:
    """Where each array of an uncompressed ``.npz`` (``np.savez``) lies in the file: the byte offset of its data,
    its dtype, shape and whether it is in Fortran order; so that one clip's rows can be read without loading it."""
    out = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{path}: {info.filename} is compressed; arrays are read in place from np.savez files")
            fh.seek(info.header_offset + 26)  # the local header's name and extra-field lengths
            name_len, extra_len = struct.unpack("<HH", fh.read(4))
            fh.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            out[info.filename.removesuffix(".npy")] = (fh.tell(), dtype, shape, fortran)
    return out


class Ragged(Sequence):
    """Per-clip ``(steps, dim)`` arrays that stay on disk: item ``i`` is read from its file when asked for, so a
    training run over 12,660 clips holds one batch of features, not the dataset. ``take`` selects clips (a view)."""

    def __init__(self, sources: list[tuple[Path, int, np.dtype, int]], rows: list[tuple[int, int, int]]):
        self.sources = sources  # (file, byte offset of the (total steps, dim) array, dtype, dim)
        self.rows = rows  # per clip: (source, first row, steps)

    @classmethod
    def from_npz(cls, files: list[Path], name: str, rows: list[tuple[int, int, int]]) -> Ragged:
        sources = []
        for path in files:
            offset, dtype, shape, fortran = npz_arrays(path)[name]
            if fortran or len(shape) != 2:
                raise ValueError(f"{path}: {name} is not a C-order (steps, dim) array")
            sources.append((Path(path), offset, dtype, int(shape[1])))
        return cls(sources, rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        source, start, n = self.rows[i]
        path, offset, dtype, dim = self.sources[source]
        with open(path, "rb") as fh:
            fh.seek(offset + start * dim * dtype.itemsize)
            return np.fromfile(fh, dtype=dtype, count=n * dim).reshape(n, dim)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def take(self, idx: Sequence[int]) -> Ragged:
        return Ragged(self.sources, [self.rows[i] for i in idx])

    def lengths(self) -> list[int]:
        return [n for _, _, n in self.rows]


class Joined(Sequence):
    """Per-clip arrays of several ragged sequences side by side along features (Stage II's ``both`` inputs)."""

    def __init__(self, parts: list[Sequence[np.ndarray]]):
        self.parts = parts

    def __len__(self) -> int:
        return len(self.parts[0])

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return np.concatenate([p[i] for p in self.parts], axis=-1)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def take(self, idx: Sequence[int]) -> Joined:
        return Joined([take(p, idx) for p in self.parts])

    def lengths(self) -> list[int]:
        return step_counts(self.parts[0])


class Chained(Sequence):
    """Per-clip sequences one after the other (the training split, then damaged copies of its clips)."""

    def __init__(self, parts: list[Sequence[np.ndarray]]):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[k][i - int(self.starts[k])]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def take(self, idx: Sequence[int]) -> Picked:
        return Picked(self, list(idx))

    def lengths(self) -> list[int]:
        return [n for p in self.parts for n in step_counts(p)]


class Picked(Sequence):
    """Clips ``idx`` of a per-clip sequence, read from it when asked for."""

    def __init__(self, base: Sequence[np.ndarray], idx: list[int]):
        self.base, self.idx = base, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return self.base[self.idx[i]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def take(self, idx: Sequence[int]) -> Picked:
        return Picked(self.base, [self.idx[i] for i in idx])

    def lengths(self) -> list[int]:
        base = step_counts(self.base)
        return [base[i] for i in self.idx]


def take(seq: Sequence[np.ndarray], idx: Sequence[int]) -> Sequence[np.ndarray]:
    """Clips ``idx`` of a per-clip sequence: a view for on-disk sequences, a list otherwise."""
    return seq.take(idx) if isinstance(seq, Ragged | Joined | Chained | Picked) else [seq[i] for i in idx]


def step_counts(seq: Sequence[np.ndarray]) -> list[int]:
    """Each clip's number of rows; on-disk sequences know them without reading the features."""
    return seq.lengths() if hasattr(seq, "lengths") else [x.shape[0] for x in seq]


CUE_KEYS = {"visual": "cues_v", "audio": "cues_a"}
"""A batch's padded reliability cues (B, T, cues) per modality, when the data has them."""


def batch_cues(batch: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """The cues of a batch as ``EMIFusionModel`` takes them ({"V": ..., "A": ...}), None without cues."""
    if CUE_KEYS["visual"] not in batch:
        return None
    return {"V": batch[CUE_KEYS["visual"]], "A": batch[CUE_KEYS["audio"]]}


def to_device(batch: dict[str, Tensor], device: torch.device | str) -> dict[str, Tensor]:
    """A batch's tensors on ``device``. To a GPU through pinned memory without waiting for the copy (the host builds
    the next batch while the copy runs; kernels on the default stream see it done); on the CPU the tensors
    themselves."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


@dataclass
class SequenceData:
    """Per-clip sequences and masks, padded per batch. ``visual``/``audio`` are lists of arrays or on-disk
    sequences (``emi.features.store.Ragged``): a clip's rows are read when its batch is built. ``cues`` are the
    per-step reliability cues of the visual and audio modalities (``emi.features.cues``, raw: never projected), or None
    for features stored without them."""

    ids: list[str]
    visual: Sequence[np.ndarray]
    audio: Sequence[np.ndarray]
    text: np.ndarray
    mask: np.ndarray  # (N, 3) V, A, T usable
    labels: np.ndarray | None  # (N, 6) or None
    cues: dict[str, Sequence[np.ndarray]] | None = None  # {"visual": ..., "audio": ...}

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: list[int] | np.ndarray) -> SequenceData:
        rows = list(rows)
        return SequenceData([self.ids[i] for i in rows], take(self.visual, rows), take(self.audio, rows),
                            self.text[rows], self.mask[rows], None if self.labels is None else self.labels[rows],
                            None if self.cues is None else {m: take(c, rows) for m, c in self.cues.items()})

    def batch(self, rows: list[int], device: torch.device | str = "cpu") -> dict[str, Tensor]:
        import torch

        vs, as_ = [self.visual[i] for i in rows], [self.audio[i] for i in rows]
        lengths = [x.shape[0] for x in vs]
        T = max(lengths)
        v = np.zeros((len(rows), T, vs[0].shape[1]), np.float32)
        a = np.zeros((len(rows), T, as_[0].shape[1]), np.float32)
        time_mask = np.zeros((len(rows), T), bool)
        for j, n in enumerate(lengths):
            v[j, :n], a[j, :n], time_mask[j, :n] = vs[j], as_[j][:n], True
        out = {"v": torch.from_numpy(v), "a": torch.from_numpy(a), "t": torch.from_numpy(self.text[rows]),
               "time_mask": torch.from_numpy(time_mask), "modality_mask": torch.from_numpy(self.mask[rows])}
        for m, key in CUE_KEYS.items() if self.cues is not None else ():
            cs = [self.cues[m][i] for i in rows]
            padded = np.zeros((len(rows), T, cs[0].shape[1]), np.float32)
            for j, n in enumerate(lengths):
                padded[j, :n] = cs[j][:n]
            out[key] = torch.from_numpy(padded)
        if self.labels is not None:
            out["y"] = torch.from_numpy(self.labels[rows].astype(np.float32))
        return to_device(out, device)

    def followed_by(self, other: SequenceData) -> SequenceData:
        """These clips, then ``other``'s (both labelled, or neither)."""
        labels = None if self.labels is None else np.concatenate([self.labels, other.labels]).astype(np.float32)
        cues = (None if self.cues is None or other.cues is None  # cues for some clips only: for none
                else {m: Chained([self.cues[m], other.cues[m]]) for m in self.cues})
        return SequenceData(self.ids + other.ids, Chained([self.visual, other.visual]),
                            Chained([self.audio, other.audio]), np.concatenate([self.text, other.text]),
                            np.concatenate([self.mask, other.mask]), labels, cues)

    def chunks(self, batch_size: int, device: torch.device | str = "cpu") -> Iterator[dict[str, Tensor]]:
        """Batches in clip order (inference): memory is one batch, whatever the number of clips."""
        for start in range(0, len(self), batch_size):
            yield self.batch(list(range(start, min(start + batch_size, len(self)))), device)

    def batches(self, batch_size: int, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu", pool: int = 1) -> Iterator[dict[str, Tensor]]:
        """Training batches in an order drawn from ``generator``. With ``pool`` > 1, the shuffled clips are cut into
        pools of ``pool`` batches, each pool sorted by length before it is cut into batches, and the batches are
        shuffled: a batch pads to a length close to its clips' own (little compute spent on padding), while which
        clips share a batch still changes every epoch."""
        import torch

        n = len(self)
        order = torch.randperm(n, generator=generator).tolist() if generator is not None else list(range(n))
        if pool > 1:
            steps = self.steps()
            size = pool * batch_size
            order = [i for start in range(0, n, size) for i in sorted(order[start:start + size], key=steps.__getitem__)]
        rows = [order[start:start + batch_size] for start in range(0, n, batch_size)]
        if pool > 1 and generator is not None:
            rows = [rows[k] for k in torch.randperm(len(rows), generator=generator).tolist()]
        for batch in rows:
            yield self.batch(batch, device)

    def steps(self) -> list[int]:
        """Each clip's number of steps on the grid (without reading the features of on-disk sequences)."""
        return step_counts(self.visual)

    def in_memory(self, max_mb: float) -> SequenceData:
        """These clips with every sequence read into memory once (a training run reads each clip every epoch), when
        they take at most ``max_mb``; else as they are (read from disk per batch)."""
        if not len(self) or not isinstance(self.visual, Ragged | Joined | Chained | Picked):
            return self
        row = sum(x.shape[1] for x in (self.visual[0], self.audio[0], *(
            [c[0] for c in self.cues.values()] if self.cues else [])))
        if sum(self.steps()) * row * 4 > max_mb * 2**20:
            return self
        return SequenceData(self.ids, list(self.visual), list(self.audio), self.text, self.mask, self.labels,
                            None if self.cues is None else {m: list(c) for m, c in self.cues.items()})


