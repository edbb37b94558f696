"""Stage I end to end (``stage1.finetune.last_k_blocks > 0``, paper section 3.3).

The last k blocks of the visual and/or audio encoder are trained together with the projection heads, from
frames and waveforms (a few frames and one waveform crop per clip and step); the rest of each encoder stays frozen
and runs without a graph. Nothing is decoded inside the training loop: the clips `emi extract` decoded are kept
(``emi.features.decoded``; a clip not kept there is decoded once, before the first epoch) and loader processes
(``extract.decode_workers``) read and crop the next batches while the current one trains. Afterwards every clip is
re-encoded with the tuned blocks -- with the same code `emi extract` and `emi predict` use -- so Stage II,
evaluation and prediction all see the tuned encoder. A modality that is not tuned keeps its cached features.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from emi.config import Params
from emi.data.dataset import list_clips
from emi.data.media import AUDIO_SAMPLE_RATE
from emi.data.sequences import Ragged
from emi.encoders.base import resolve_device, resolve_dtype
from emi.encoders.registry import encoder_spec, load_encoders
from emi.encoders.tuning import block_state, load_block_state, tunable_blocks, under
from emi.features.decode import Decoded, FaceCropper, decode_clips
from emi.features.decoded import DecodedStore
from emi.features.featurize import Featurizer, usable_wave
from emi.model import AlignmentModel
from emi.data.sequences import SequenceData


log = logging.getLogger(__name__)

TRAINED_ON = frozenset({"train", "valid"})
"""The splits the fine-tuning loop reads (the train loss and the validation loss): kept decoded before it starts."""


class FinetuneError(RuntimeError):
    """The clips cannot be decoded or encoded the way `emi extract` did (the dataset changed since)."""


class KeptClips(Dataset):
    """Clip ``i`` read from the kept decodes, its frames cropped to the face when ``face_margin`` is set (the
    cropper is made in each loader process)."""

    def __init__(self, store: DecodedStore, clips: list, face_margin: float | None):
        self.store, self.clips, self.face_margin = store, clips, face_margin
        self._cropper: FaceCropper | None = None

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> Decoded:
        d = self.store.load(self.clips[i])
        if d is None:
            raise FinetuneError(f"{self.clips[i].path}: its kept decode went missing from {self.store.root} "
                                "during training")
        if self.face_margin is None:
            return d
        if self._cropper is None:
            self._cropper = FaceCropper(self.face_margin)
        return self._cropper.crop(d)[0]


class Finetuner:
    """The trainable encoder blocks of Stage I and the data path that feeds them."""

    def __init__(self, params: Params, raw_dir: Path, data: SequenceData, decoded: Path):
        self.params, self.cfg, self.f = params, params.extract, params.stage1.finetune
        self.device = resolve_device(self.cfg.device)
        # the weights stay fp32 (the optimiser's copy); on a GPU the forward runs under autocast in extract.dtype
        self.amp = resolve_dtype(self.cfg.dtype, self.device)
        by_id = {c.id: c for c in list_clips(Path(raw_dir))}
        missing = [i for i in data.ids if i not in by_id]
        if missing:
            raise FinetuneError(f"{raw_dir}: {len(missing)} clip(s) of the feature store are not in the dataset "
                                f"(e.g. {missing[0]}); fine-tuning decodes the clips again")
        self.clips = [by_id[i] for i in data.ids]
        self.data = data
        self.encoders = load_encoders(self.cfg, self.device, torch.float32, set(self.f.modalities))
        self.blocks: dict[str, list[str]] = {}
        for m, encoder in self.encoders.items():
            tunable = tunable_blocks(encoder, f"extract.{m}")
            names = tunable.last(self.f.last_k_blocks, f"extract.{m}")
            for name, p in tunable.module.named_parameters():
                p.requires_grad_(under(name, names))
            self.blocks[m] = names
        self._train_mode(True)
        # every clip from the kept decodes (extract's, else decoded once here): no decode inside the loop
        self.store = DecodedStore(Path(decoded), self.cfg, params.data, keep=TRAINED_ON).hashed(self.clips)
        self.decoded_now = self._keep_all()
        log.info("stage I: train and valid clips read from %s, %d of them decoded once now (not kept by extract)",
                 self.store.root, self.decoded_now)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)

    # ------------------------------------------------------------------ what is trained and saved
    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for e in self.encoders.values() for p in e.blocks().module.parameters() if p.requires_grad]

    def tuned(self) -> dict:
        """Per tuned modality: the encoder spec it belongs to, the block names and their weights."""
        return {m: {"spec": encoder_spec(self.cfg, m), "blocks": names, "state": block_state(self.encoders[m], names)}
                for m, names in self.blocks.items()}

    def load(self, tuned: dict) -> None:
        for m, entry in tuned.items():
            load_block_state(self.encoders[m], entry["state"], f"extract.{m}")

    def _train_mode(self, on: bool) -> None:
        """Tuned blocks train (dropout) only while training; the frozen part always evaluates (no layer drop)."""
        for m, names in self.blocks.items():
            module = tunable_blocks(self.encoders[m], f"extract.{m}").module.eval()
            for name, sub in module.named_modules():
                if name in names:
                    sub.train(on)

    def _autocast(self):
        if self.amp == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    # ------------------------------------------------------------------ the data path
    def _keep_all(self) -> int:
        """Decode (once) and keep every clip of the splits the loop reads that the store does not hold yet; how many
        that was."""
        missing = [i for i, c in enumerate(self.clips) if c.split in TRAINED_ON and not self.store.path(c).is_file()]
        step = self.cfg.shard_size
        for start in range(0, len(missing), step):
            for d in decode_clips([self.clips[i] for i in missing[start:start + step]], self.cfg, self.params.data,
                                  True, True, self.store):
                if d.visual_status == "error":
                    raise FinetuneError(f"{d.clip.path}: decodable at extract time, not now: {d.detail}")
        return len(missing)

    def batches(self, batches: list[list[int]]) -> Iterator[tuple[list[int], list[Decoded]]]:
        """The batches' clips as the visual encoder sees them (kept decodes, cropped), read ``decode_workers``
        batches ahead by loader processes, in order."""
        clips = KeptClips(self.store, self.clips, self.cfg.face_margin if self.cfg.face_crop else None)
        workers = self.cfg.decode_workers if len(batches) > 1 else 0
        # its own generator: a loader draws a seed for its workers, which must not move the training's random
        # stream (the tuned weights do not depend on how many workers read, or whether any do)
        loader = DataLoader(clips, batch_sampler=batches, collate_fn=list, num_workers=workers,
                            prefetch_factor=2 if workers else None, multiprocessing_context="fork" if workers else None,
                            generator=torch.Generator())
        yield from zip(batches, loader)

    def _pick(self, n: int, generator: torch.Generator | None) -> list[int]:
        k = min(self.f.frames_per_clip, n)
        if generator is None:  # evaluation: evenly spaced, reproducible
            return sorted({int(i) for i in np.linspace(0, n - 1, k).round()})
        return sorted(torch.randperm(n, generator=generator)[:k].tolist())

    def _visual(self, decoded: list[Decoded], generator: torch.Generator | None) -> torch.Tensor:
        encoder = self.encoders["visual"]
        frames, owner = [], []
        for j, d in enumerate(decoded):
            for i in self._pick(len(d.frames), generator):
                frames.append(d.frames[i])
                owner.append(j)
        by_shape: dict[tuple, list[int]] = {}
        for i, frame in enumerate(frames):  # real datasets mix resolutions; a forward needs one size
            by_shape.setdefault(frame.shape, []).append(i)
        feats: list[torch.Tensor | None] = [None] * len(frames)
        for idx in by_shape.values():
            out = encoder.features(np.stack([frames[i] for i in idx])).float()
            for i, row in zip(idx, out):
                feats[i] = row
        stacked = torch.stack(feats)  # type: ignore[arg-type]
        owners = torch.tensor(owner, device=stacked.device)
        sums = torch.zeros(len(decoded), stacked.shape[1], device=stacked.device).index_add(0, owners, stacked)
        return sums / torch.bincount(owners, minlength=len(decoded)).clamp(min=1).unsqueeze(1)

    def _audio(self, decoded: list[Decoded], generator: torch.Generator | None) -> torch.Tensor:
        encoder = self.encoders["audio"]
        length = int(round(self.f.audio_seconds * AUDIO_SAMPLE_RATE))
        windows, valid, usable = [], [], []
        for j, d in enumerate(decoded):
            if usable_wave(d) is None:
                continue
            spare = max(d.wave.size - length, 0)
            start = (spare // 2 if generator is None else
                     int(torch.randint(spare + 1, (1,), generator=generator))) if spare else 0
            piece = d.wave[start:start + length]
            windows.append(np.pad(piece, (0, length - piece.size)).astype(np.float32))
            valid.append(piece.size)
            usable.append(j)
        out = torch.zeros(len(decoded), encoder.dim, device=self.device)
        if windows:
            hidden = encoder.features(np.stack(windows)).float()
            for row, (j, n) in enumerate(zip(usable, valid)):
                steps = min(hidden.shape[1], math.ceil(n / AUDIO_SAMPLE_RATE * encoder.frame_rate))
                out[j] = hidden[row, :steps].mean(0)
        return out

    def _cached(self, rows: list[int], modality: str) -> torch.Tensor:
        seqs = self.data.visual if modality == "visual" else self.data.audio
        return torch.from_numpy(np.stack([seqs[i].mean(0) for i in rows])).to(self.device)

    def vectors(self, rows: list[int], decoded: list[Decoded],
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip vectors (visual, audio) for Stage I's loss: tuned modalities from the clips ``decoded`` (cropped,
        as the encoder sees them in `emi extract`), others cached."""
        with self._autocast():
            v = self._visual(decoded, generator) if "visual" in self.blocks else self._cached(rows, "visual")
            a = self._audio(decoded, generator) if "audio" in self.blocks else self._cached(rows, "audio")
        return v.float(), a.float()

    def _loss(self, model: AlignmentModel, rows: list[int], decoded: list[Decoded],
              generator: torch.Generator | None) -> dict:
        v, a = self.vectors(rows, decoded, generator)
        mask = torch.from_numpy(self.data.mask[rows]).to(self.device)
        t = torch.from_numpy(self.data.text[rows]).to(self.device)
        return model(v, a, t, vt_mask=mask[:, 0] & mask[:, 2], at_mask=mask[:, 1] & mask[:, 2])

    # ------------------------------------------------------------------ training
    def train_epoch(self, model: AlignmentModel, optimizer: torch.optim.Optimizer, rows: list[int],
                    batch_size: int, generator: torch.Generator) -> list[float]:
        model.train()
        order = [rows[j] for j in torch.randperm(len(rows), generator=generator).tolist()]
        batches = [b for start in range(0, len(order), batch_size)
                   if len(b := order[start:start + batch_size]) >= 2]  # InfoNCE needs a negative
        losses = []
        for batch, decoded in self.batches(batches):
            loss = self._loss(model, batch, decoded, generator)["loss"]
            optimizer.zero_grad()
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
            losses.append(loss.item())
        return losses

    @torch.no_grad()
    def valid_loss(self, model: AlignmentModel, rows: list[int], batch_size: int) -> dict[str, float]:
        if len(rows) < 2:
            return {}
        model.eval()
        self._train_mode(False)
        vs, as_ = zip(*(self.vectors(batch, decoded, None) for batch, decoded in
                        self.batches([rows[i:i + batch_size] for i in range(0, len(rows), batch_size)])))
        mask = torch.from_numpy(self.data.mask[rows]).to(self.device)
        t = torch.from_numpy(self.data.text[rows]).to(self.device)
        out = model(torch.cat(vs), torch.cat(as_), t, vt_mask=mask[:, 0] & mask[:, 2], at_mask=mask[:, 1] & mask[:, 2])
        self._train_mode(True)
        return {"valid_loss": float(out["loss"]), "valid_loss_vt": float(out["loss_vt"]),
                "valid_loss_at": float(out["loss_at"])}

    # ------------------------------------------------------------------ afterwards
    def reencode(self, data: SequenceData, work_dir: Path) -> SequenceData:
        """Every clip's tuned modalities encoded again by the one featurize path (extract.dtype, batched), written
        chunk by chunk to ``work_dir/<modality>.bin`` and read back from there per clip (``Ragged``): memory holds a
        chunk, not the dataset. Their reliability cues are taken again too (the expression confidence comes from
        the tuned classifier), as ``predict`` will see them. The caller removes ``work_dir`` once the aligned file
        is written."""
        tuned = self.tuned()
        encoders = load_encoders(self.cfg, self.device, resolve_dtype(self.cfg.dtype, self.device), set(tuned), tuned)
        featurizer = Featurizer(self.cfg, self.params.data, encoders, self.store)
        work_dir = Path(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        out = {"visual": data.visual, "audio": data.audio}
        cues = dict(data.cues) if data.cues is not None else None
        parts = [(m, kind) for m in tuned for kind in (("features", "cues") if cues is not None else ("features",))]
        sinks = {part: open(work_dir / f"{part[0]}-{part[1]}.bin", "wb") for part in parts}
        rows: dict[tuple[str, str], list[tuple[int, int, int]]] = {part: [] for part in parts}
        dims: dict[tuple[str, str], int] = {}
        written = dict.fromkeys(parts, 0)
        try:
            step = self.cfg.shard_size
            for start in range(0, len(data), step):
                chunk = list(range(start, min(start + step, len(data))))
                clips = [self.clips[i] for i in chunk]
                feats = featurizer.encode(featurizer.decode(clips, set(tuned)), {}, set(tuned))
                for m, kind in parts:
                    new_rows = getattr(feats, m) if kind == "features" else feats.cues[m]
                    for k, i in enumerate(chunk):
                        new = self._same_length(new_rows[k], out[m][i], data.ids[i])
                        dims[m, kind] = new.shape[1]
                        sinks[m, kind].write(np.ascontiguousarray(new).tobytes())
                        rows[m, kind].append((0, written[m, kind], new.shape[0]))
                        written[m, kind] += new.shape[0]
        finally:
            for fh in sinks.values():
                fh.close()
        for m, kind in parts:
            seq = Ragged([(work_dir / f"{m}-{kind}.bin", 0, np.dtype(np.float32), dims.get((m, kind), 1))],
                         rows[m, kind])
            if kind == "features":
                out[m] = seq
            else:
                cues[m] = seq
        return SequenceData(data.ids, out["visual"], out["audio"], data.text, data.mask, data.labels, cues)

    @staticmethod
    def _same_length(new: np.ndarray, old: np.ndarray, clip_id: str) -> np.ndarray:
        if new.shape[0] != old.shape[0]:
            raise FinetuneError(f"{clip_id}: {new.shape[0]} steps after fine-tuning, {old.shape[0]} in the feature "
                                "store (the dataset changed since extract; run `emi extract` again)")
        return new.astype(np.float32)
