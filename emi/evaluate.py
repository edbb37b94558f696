"""``emi evaluate``: what the trained pipeline is worth, in files a person and DVC can read.

- metrics: the saved Stage-II model re-run on the aligned features (this proves the saved file), per-dimension and
  mean Pearson and MSE per labelled split, next to the oracle ceiling of the embedded dataset (ridge regression from
  the generator's rendered latents to the labels);
- robustness: the same models on the validation clips decoded again and damaged (occluded face, noisy audio,
  missing audio, missing text): does the weight of a damaged modality fall, and does quality fusion lose less
  than average fusion;
- the ABAW submission file for the test ids, DVC plot data, figures and ``report.md``.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.progress import Progress

from emi.config import EMOTIONS, SPLIT_HEADER, Params, RobustnessParams, Stage2Params
from emi.encoders import resolve_device, resolve_dtype
from emi.extract import (Decoded, FaceCropper, _crop_faces, _read_transcripts, decode_clip, encode_audio,
                         encode_frames, list_clips, load_encoders)
from emi.infer import Damage, damage_clip, model_inputs, model_params_inputs, run_model
from emi.model import EMIFusionModel
from emi.stage1 import load_tuned_encoders
from emi.stage2 import load_model, predict, split_data, train_model
from emi.train import SequenceData, pearson_per_dim
from emi.transcribe import Clip
from emi.transcribe import list_clips as split_listing
from emi.utils import atomic_path, fingerprint, sha256_file, tracked, write_json, write_text

log = logging.getLogger(__name__)

CONDITIONS = ("clean", "occluded_face", "noisy_audio", "missing_audio", "missing_text")
DAMAGED_MODALITY = {"occluded_face": "V", "noisy_audio": "A", "missing_audio": "A", "missing_text": "T"}
FUSIONS = ("quality", "average")


class EvaluateError(RuntimeError):
    """The outputs cannot be evaluated as asked (e.g. test ids without a prediction); the message names them."""


@dataclass
class EvaluateResult:
    metrics: dict
    paths: dict[str, Path]
    seconds: float
    data_fingerprint: str
    params_fingerprint: str
    robustness: pd.DataFrame = field(default_factory=pd.DataFrame)
    submission_filled: list[str] = field(default_factory=list)

    def tracking(self) -> dict:
        """Flat metric names as Stage II logs them (``valid_pearson_mean``), plus the reports as artifacts."""
        flat: dict[str, float] = {"seconds": self.seconds}
        for key, value in self.metrics.items():
            if key in ("ceiling", "fraction_of_ceiling"):
                for split, v in value.items():
                    flat.update({f"ceiling_{split}_{k}": x for k, x in v.items()} if isinstance(v, dict) else
                                {f"{key}_{split}": v})
            else:
                flat.update({f"{key}_{k}": v for k, v in value.items()})
        for r in self.robustness.to_dict(orient="records"):
            for k in ("pearson_mean", "mse", "weight_V", "weight_A", "weight_T"):
                flat[f"robustness_{r['condition']}_{r['fusion']}_{k}"] = r[k]
        return {"metrics": flat, "artifacts": [p for p in self.paths.values() if p.suffix != ".png"] +
                [self.paths["per_dimension_png"].parent]}


# ----------------------------------------------------------------------------- scores
def scores(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    r = pearson_per_dim(pred, labels)
    return {"pearson_mean": float(r.mean()), **{f"pearson_{e}": float(v) for e, v in zip(EMOTIONS, r)},
            "mse": float(((pred - labels) ** 2).mean()), "n": len(labels)}


RENDERED_PROSODY = ("pitch", "rate", "amplitude", "word_gap")


def ceiling(raw_dir: Path, parts: dict[str, SequenceData], splits: list[str], alpha: float) -> tuple[dict, str] | None:
    """Oracle ridge regression (standardized inputs) from what the generator rendered to the labels: fit on
    train, scored on the clips the model was scored on. Embedded dataset only: None without
    ``_generator/latents.csv``.

    Its inputs are the rendered face controls and prosody (``face_*``, pitch, rate, amplitude, word_gap): they
    carry each person's expressiveness, which the labels do not, so this bounds what a model reading the clips can
    reach. The ``latent_*`` columns are the annotators' side of the chain (labels = latent + noise) and would
    only measure the label noise; they are the fallback when no rendered columns exist."""
    path = Path(raw_dir) / "_generator" / "latents.csv"
    if not path.is_file():
        return None
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    table = pd.read_csv(path, dtype={"id": str}).set_index("id")
    cols = [c for c in table.columns if c.startswith("face_")] + [c for c in RENDERED_PROSODY if c in table]
    source = "rendered face controls + prosody"
    if not cols:
        cols, source = [f"latent_{e}" for e in EMOTIONS], "latent intensities (no rendered controls found)"
    table = table[cols].apply(pd.to_numeric, errors="coerce").dropna()

    def rows(part: SequenceData) -> tuple[np.ndarray, np.ndarray]:
        keep = [i for i, c in enumerate(part.ids) if c in table.index]
        return table.loc[[part.ids[i] for i in keep]].to_numpy(float), part.labels[keep]

    oracle = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(*rows(parts["train"]))
    out = {}
    for split in splits:
        x, y = rows(parts[split])
        if len(y) >= 2:
            out[split] = scores(oracle.predict(x), y)
    return out, f"{source}: {', '.join(cols)}"


def scored_splits(params: Params, parts: dict[str, SequenceData]) -> list[str]:
    return [s for s in params.evaluate.splits if parts[s].labels is not None and len(parts[s]) >= 2]


# ----------------------------------------------------------------------------- submission
def submission(test_ids: list[str], predicted: pd.DataFrame, fill: np.ndarray,
               max_error_fraction: float) -> tuple[pd.DataFrame, list[str]]:
    """ABAW rows for every test id in the split file's order.

    A test clip that reached no prediction (skipped as unreadable by an earlier stage) gets ``fill`` (the mean
    training label: the constant with the lowest expected MSE, neutral for Pearson) when such clips are within
    the dataset's error tolerance (``download.validation.max_error_fraction``); beyond it, this is an error that
    lists them, since a submission with guessed rows would misstate the model. An id listed twice is submitted
    once (the raw-data report names the repeat)."""
    repeated = sorted({i for i in test_ids if test_ids.count(i) > 1})
    if repeated:
        log.warning("submission: test ids listed more than once, submitted once: %s", ", ".join(repeated))
    test_ids = list(dict.fromkeys(test_ids))
    missing = [i for i in test_ids if i not in predicted.index]
    if missing and len(missing) > max_error_fraction * len(test_ids):
        raise EvaluateError(f"{len(missing)} of {len(test_ids)} test clip(s) have no prediction (over the "
                            f"tolerated {max_error_fraction:.1%}): {', '.join(missing)}")
    if missing:
        log.warning("submission: %d test clip(s) without a prediction get the mean training label: %s",
                    len(missing), ", ".join(missing))
    values = np.stack([predicted.loc[i, list(EMOTIONS)].to_numpy(float) if i in predicted.index else fill
                       for i in test_ids]) if test_ids else np.zeros((0, len(EMOTIONS)))
    table = pd.DataFrame(np.clip(values, 0, 1), columns=list(EMOTIONS))
    table.insert(0, "Filename", test_ids)
    return table[list(SPLIT_HEADER)], missing


# ----------------------------------------------------------------------------- robustness
def conditions(r: RobustnessParams) -> dict[str, Damage | None]:
    return {"clean": None, "occluded_face": Damage(occlusion_box=tuple(r.occlusion_box)),
            "noisy_audio": Damage(noise_snr_db=r.noise_snr_db), "missing_audio": Damage(drop_audio=True),
            "missing_text": Damage(drop_text=True)}


def damaged_rows(n: int, rate: float, seed: int) -> np.ndarray:
    """The clips every damage condition is applied to: the same round(rate * n) clips, chosen by the seed."""
    k = round(rate * n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)) if k else np.zeros(0, int)


def _touched(damage: Damage) -> set[str]:
    out = set()
    if damage.occlusion_box is not None:
        out.add("V")
    if damage.noise_snr_db is not None or damage.drop_audio:
        out.add("A")
    if damage.drop_text:
        out.add("T")
    return out


def _decode(params: Params, clips: list[Clip]) -> list[Decoded]:
    """Both tracks of each clip, as ``clip_features`` decodes them (threads: PyAV releases the GIL)."""
    def one(clip: Clip) -> Decoded:
        return decode_clip(clip, params.extract, True, True, params.download.validation.max_duration_s)

    if params.extract.decode_workers <= 1:
        return [one(c) for c in clips]
    with ThreadPoolExecutor(params.extract.decode_workers) as pool:
        return list(pool.map(one, clips))


def _encode(params: Params, decoded: list[Decoded], texts: dict[str, str | None], encoders: dict,
            which: set[str], drop_text: bool, cropper: FaceCropper | None) -> dict:
    """The features `extract` (and `emi.infer.clip_features`) make of decoded clips, only for ``which``."""
    cfg = params.extract
    out: dict = {}
    if "V" in which:
        decoded_v = [replace(d) for d in decoded]  # cropping replaces frames: keep the decoded ones for damage
        found = [_crop_faces(d, cropper) if cropper else None for d in decoded_v]
        out["V"] = encode_frames(encoders["visual"], decoded_v, cfg.batch_size), [f is not False for f in found]
    if "A" in which:
        usable = [d.wave if d.audio_status in ("ok", "silent") else None for d in decoded]
        out["A"] = (encode_audio(encoders["audio"], usable, [d.n_steps for d in decoded], cfg.fps,
                                 cfg.audio.window_s, cfg.batch_size), [d.audio_status == "ok" for d in decoded])
    if "T" in which:
        text, ok = np.zeros((len(decoded), cfg.text.dim), np.float32), []
        for i, d in enumerate(decoded):
            sentence = None if drop_text else texts.get(d.clip.id)
            if sentence:
                text[i] = encoders["text"].encode([sentence])[0]  # one at a time, as clip_features does
            ok.append(bool(sentence))
        out["T"] = list(text), ok
    return out


def condition_features(params: Params, clips: list[Clip], texts: dict[str, str | None], encoders: dict,
                       damages: dict[str, Damage | None], rows: np.ndarray, seed: int,
                       progress: Progress | None = None) -> dict[str, SequenceData]:
    """Encoder features of ``clips`` under each damage (applied to ``rows`` only), as ``clip_features`` makes them.

    Each clip is decoded once and only the modality a damage touches is encoded again: the same numbers as
    ``clip_features(params, damaged clips, texts, encoders, damage, seed)`` at a fraction of the cost. Chunks of
    ``extract.shard_size`` clips keep memory bounded on a full-size validation split."""
    cfg = params.extract
    cropper = FaceCropper(cfg.face_margin) if cfg.face_crop else None
    rngs = {name: np.random.default_rng(seed) for name in damages}  # one stream per condition, in clip order
    chosen = set(rows.tolist())
    feats = {name: {"V": [], "A": [], "T": [], "mask": []} for name in damages}
    task = progress.add_task("robustness features", total=len(clips)) if progress else None
    for start in range(0, len(clips), cfg.shard_size):
        chunk = clips[start:start + cfg.shard_size]
        decoded = _decode(params, chunk)
        broken = [f"{d.clip.id} ({d.detail})" for d in decoded if d.visual_status == "error"]
        if broken:
            raise EvaluateError(f"validation clip(s) cannot be decoded again: {', '.join(broken)}")
        clean = _encode(params, decoded, texts, encoders, {"V", "A", "T"}, False, cropper)
        for name, damage in damages.items():
            cols = {m: list(v) for m, (v, _) in clean.items()}
            masks = {m: list(ok) for m, (_, ok) in clean.items()}
            idx = [j for j in range(len(chunk)) if start + j in chosen] if damage else []
            if idx:
                hurt = [damage_clip(replace(decoded[j]), damage, rngs[name]) for j in idx]
                redone = _encode(params, hurt, texts, encoders, _touched(damage), damage.drop_text, cropper)
                for m, (values, ok) in redone.items():
                    for k, j in enumerate(idx):
                        cols[m][j], masks[m][j] = values[k], ok[k]
            feats[name]["V"] += cols["V"]
            feats[name]["A"] += cols["A"]
            feats[name]["T"] += cols["T"]
            feats[name]["mask"] += list(zip(masks["V"], masks["A"], masks["T"]))
        if progress:
            progress.advance(task, len(chunk))
    ids = [c.id for c in clips]
    return {name: SequenceData(ids, f["V"], f["A"], np.stack(f["T"]).astype(np.float32) if f["T"] else
                               np.zeros((0, cfg.text.dim), np.float32), np.array(f["mask"], bool).reshape(-1, 3),
                               None) for name, f in feats.items()}


def robustness(params: Params, valid: SequenceData, clips: list[Clip], texts: dict[str, str | None],
               alignment_path: Path, models: dict[str, tuple[EMIFusionModel, str]],
               show_progress: bool = False) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Condition x fusion: mean Pearson and MSE over all validation clips (the damaged ones included) and the mean
    fusion weight per modality over the damaged clips (the same clips under ``clean``, for comparison)."""
    cfg = params.extract
    device = resolve_device(cfg.device)
    encoders = load_encoders(cfg, device, resolve_dtype(cfg.dtype, device), {"visual", "audio", "text"},
                             load_tuned_encoders(alignment_path))
    rows = damaged_rows(len(clips), params.evaluate.robustness.rate, params.seed)
    with Progress(disable=not show_progress) as progress:
        feats = condition_features(params, clips, texts, encoders, conditions(params.evaluate.robustness), rows,
                                   params.seed, progress)
    table, predictions = [], {}
    for name in CONDITIONS:
        for fusion, (model, inputs) in models.items():
            out = run_model(model, model_inputs(feats[name], alignment_path, inputs), params.stage2.batch_size)
            predictions[f"{name}/{fusion}"] = out
            pred = out[list(EMOTIONS)].to_numpy(float)
            s = scores(pred, valid.labels)
            w = out.iloc[rows][[f"weight_{m}" for m in "VAT"]].mean()  # NaN when no clip is damaged
            table.append({"condition": name, "fusion": fusion, "pearson_mean": s["pearson_mean"], "mse": s["mse"],
                          "weight_V": float(w.iloc[0]), "weight_A": float(w.iloc[1]), "weight_T": float(w.iloc[2]),
                          "n_damaged": 0 if name == "clean" else len(rows), "n": len(clips)})
    table = pd.DataFrame(table)
    clean = table[table.condition == "clean"].set_index("fusion")["pearson_mean"]
    table.insert(3, "delta_pearson", table["pearson_mean"] - table["fusion"].map(clean))
    return table, predictions


def robustness_verdict(table: pd.DataFrame) -> list[str]:
    """The two questions the table answers, in words."""
    t = table.set_index(["condition", "fusion"])
    lines = []
    for cond, m in DAMAGED_MODALITY.items():
        if (cond, "quality") not in t.index:
            continue
        before, after = t.loc[("clean", "quality"), f"weight_{m}"], t.loc[(cond, "quality"), f"weight_{m}"]
        verb = "falls" if after < before - 1e-6 else "does not fall"
        line = f"- **{cond}**: quality-fusion weight of {m} {verb} ({before:.3f} → {after:.3f})"
        if (cond, "average") in t.index:
            dq, da = t.loc[(cond, "quality"), "delta_pearson"], t.loc[(cond, "average"), "delta_pearson"]
            which = "quality degrades less" if dq > da else "average degrades less" if da > dq else "equal"
            line += f"; mean Pearson change quality {dq:+.4f} vs average {da:+.4f}: {which}"
        lines.append(line + ".")
    return lines


# ----------------------------------------------------------------------------- plots
def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1):
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state: safe in threads and servers

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_per_dimension(per_dim: pd.DataFrame, path: Path) -> Path:
    fig, ax = _figure(8, 3.8)
    ax = ax[0, 0]
    bars = [c for c in per_dim.columns if c != "emotion"]
    x, width = np.arange(len(per_dim)), 0.8 / max(1, len(bars))
    for k, col in enumerate(bars):
        ax.bar(x + (k - (len(bars) - 1) / 2) * width, per_dim[col], width,
               label=col.replace("_", " "), hatch="//" if col.startswith("ceiling") else None, alpha=0.85)
    ax.set_xticks(x, per_dim["emotion"], rotation=15)
    ax.set_ylabel("Pearson r")
    ax.axhline(0, color="black", lw=0.5)
    ax.legend(fontsize=8, ncols=2)
    ax.set_title("Per-dimension Pearson (model vs oracle ceiling)")
    return _save(fig, path)


def plot_scatter(scatter: pd.DataFrame, path: Path) -> Path:
    fig, axes = _figure(10, 6.5, ncols=3, nrows=2)
    for ax, emotion in zip(axes.flat, EMOTIONS):
        for split, group in scatter[scatter.emotion == emotion].groupby("split", sort=False):
            ax.scatter(group["true"], group["predicted"], s=10, alpha=0.7, label=split)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set(xlim=(0, 1), ylim=(0, 1), title=emotion, xlabel="true", ylabel="predicted")
    axes[0, 0].legend(fontsize=8)
    return _save(fig, path)


def plot_weights(table: pd.DataFrame, path: Path) -> Path:
    fig, axes = _figure(11, 3.8, ncols=2)
    quality = table[table.fusion == "quality"].set_index("condition")
    x = np.arange(len(quality))
    bottom = np.zeros(len(quality))
    for m in "VAT":
        axes[0, 0].bar(x, quality[f"weight_{m}"], 0.6, bottom=bottom, label=m)
        bottom += quality[f"weight_{m}"].fillna(0).to_numpy()
    axes[0, 0].set_xticks(x, quality.index, rotation=15)
    axes[0, 0].set(ylabel="mean fusion weight (damaged clips)", title="Quality fusion: weight per modality",
                   ylim=(0, 1.02))
    axes[0, 0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    fusions = list(dict.fromkeys(table.fusion))
    width = 0.8 / len(fusions)
    for k, fusion in enumerate(fusions):
        part = table[table.fusion == fusion].set_index("condition").reindex(quality.index)
        axes[0, 1].bar(x + (k - (len(fusions) - 1) / 2) * width, part["pearson_mean"], width, label=fusion)
    axes[0, 1].set_xticks(x, quality.index, rotation=15)
    axes[0, 1].set(ylabel="mean Pearson (valid)", title="Quality vs average fusion under damage")
    axes[0, 1].legend(fontsize=8)
    return _save(fig, path)


# ----------------------------------------------------------------------------- report
def _md_table(frame: pd.DataFrame, digits: int = 4) -> str:
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "–" if np.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def data_fingerprint(raw_dir: Path, features_dir: Path) -> tuple[str, dict[str, str]]:
    files = {f"{s}_split.csv": Path(raw_dir) / f"{s}_split.csv" for s in ("train", "valid", "test")}
    files["features/index.csv"] = Path(features_dir) / "index.csv"
    hashes = {name: sha256_file(p) for name, p in files.items() if p.is_file()}
    return fingerprint(hashes), hashes


def report_markdown(ctx: dict) -> str:
    m, params = ctx["metrics"], ctx["params"]
    frac = m.get("fraction_of_ceiling", {})
    head = [f"**{s}** mean Pearson **{m[s]['pearson_mean']:.4f}** (MSE {m[s]['mse']:.4f}, n={m[s]['n']})"
            for s in ctx["splits"]]
    head += [f"**{frac[s]:.0%}** of the oracle ceiling on {s} ({m['ceiling'][s]['pearson_mean']:.4f})"
             for s in frac]
    out = ["# EMI evaluation report", "",
           (f"Profile `{params.profile}` · seed {params.seed} · params fingerprint `{ctx['params_fp']}` · "
            f"data fingerprint `{ctx['data_fp']}`"), "", "## Headline", "", *[f"- {h}" for h in head]]
    if "ceiling" in m:
        out.append(f"- ceiling = oracle ridge regression (alpha {params.evaluate.ceiling_alpha:g}) on what the "
                   f"generator rendered ({ctx['ceiling_source']}), fit on train: the most a model reading these "
                   "clips can be expected to reach")
    else:
        out.append("- no ceiling: the dataset has no generator latents (`_generator/latents.csv`), i.e. it is not "
                   "the embedded synthetic one")
    out += ["", "## Per dimension", "", _md_table(ctx["per_dim"]), "",
            "![per-dimension Pearson](figures/per_dimension.png)", "",
            "Predicted vs true (each point one clip):", "", "![scatter](figures/scatter.png)", ""]

    out += ["## Ablation (validation split)", ""]
    if ctx["ablation_md"]:
        body = [ln for ln in ctx["ablation_md"].splitlines() if not ln.startswith("# ")]
        out += [*body, ""]
    else:
        out += ["No ablation table found (run the ablation stage: `reports/ablation.md`).", ""]

    rob = ctx["robustness"]
    r = params.evaluate.robustness
    out += ["## Robustness (validation clips, decoded again and damaged)", "",
            (f"Each condition damages {rob['n_damaged'].max()} of {rob['n'].iloc[0]} validation clips "
             f"(rate {r.rate:g}, chosen with the seed): occluded face = box {list(r.occlusion_box)} of the frame "
             f"blacked out; noisy audio = white noise at {r.noise_snr_db:g} dB SNR; missing audio / text = the "
             "modality removed (masked). Pearson and MSE are over all validation clips; weights are the mean "
             "fusion weight over the damaged clips (the same clips for `clean`). Average fusion: "
             f"{ctx['average_source']}."), "",
            _md_table(rob.drop(columns=["n"])), "", *robustness_verdict(rob), "",
            f"Check: clean re-decoded predictions vs the stored features, max |Δ| = {ctx['clean_diff']:.2e}.", "",
            "![fusion weights per condition](figures/weights.png)", ""]

    s1 = ctx["stage1"]
    out += ["## Stage I alignment (validation retrieval)", ""]
    if s1:
        rows = [{"direction": d, **{k: s1.get(f"{d}_{k}", float("nan")) for k in
                                     ("recall@1", "chance@1", "recall@5", "chance@5")}, "pairs": s1.get(f"{d}_pairs")}
                for d in ("v2t", "a2t")]
        out += [_md_table(pd.DataFrame(rows)), "", f"Temperature {s1.get('temperature', float('nan')):.4g}.", ""]
    else:
        out += ["No Stage I metrics found.", ""]

    manifest = ctx["manifest"] or {}
    encoders = manifest.get("encoders", [])
    random = manifest.get("random_init")
    out += ["## Encoders", ""]
    if random:
        out.append(f"**Random-init (untrained) encoders: {', '.join(random)}** — their modality carries no "
                   "pretrained knowledge; scores are not comparable with the paper.")
    elif manifest:
        out.append("Random-init: none: all encoders pretrained.")
    else:
        out.append("No features manifest found: encoders unknown.")
    out += [f"- `{e['role']}`: {e['kind']} {e['name']} ({e['source']}{', RANDOM INIT' if e.get('random_init') else ''})"
            for e in encoders] + [""]

    out += ["## Dataset", ""]
    dl, tr = ctx["download"], ctx["transcribe"]
    if dl and dl.get("facts"):
        f = dl["facts"]
        out.append(f"- clips per split: {f.get('rows_per_split')}; readable {f.get('readable_clips')}; without "
                   f"audio track {f.get('clips_without_audio_track')}")
        if "duration_s" in f:
            out.append(f"- duration {f['duration_s'].get('min')}–{f['duration_s'].get('max')} s "
                       f"(total {f['duration_s'].get('total', 0):.0f} s); resolutions {f.get('resolutions')}; "
                       f"fps {f.get('fps')}; source {f.get('source', {}).get('source', '?')}")
    if tr and tr.get("facts"):
        f = tr["facts"]
        wer = f"WER {f['wer']:.3f} over {f.get('wer_clips')} clips" if f.get("wer") is not None else "WER n/a"
        out.append(f"- transcripts: {wer}; status {f.get('status_counts')}; empty-text rate "
                   f"{f.get('empty_text_rate')}; {f.get('asr', '')}")
    if not (dl or tr):
        out.append("- no validation reports found")
    sub = ctx["submission"]
    out += ["", "## Submission", ""]
    if sub is None:
        out.append("No test split: no submission written.")
    else:
        out.append(f"`submission.csv`: {sub['rows']} test rows in `test_split.csv` order, ABAW header.")
        if sub["filled"]:
            out.append(f"{len(sub['filled'])} test clip(s) had no prediction (skipped upstream, within tolerance) "
                       f"and carry the mean training label: {', '.join(sub['filled'])}.")
    out += ["", "## Provenance", "", f"- params fingerprint `{ctx['params_fp']}` (profile `{params.profile}`)",
            f"- data fingerprint `{ctx['data_fp']}` over " + ", ".join(f"{k} `{v[:12]}`" for k, v in
                                                                       ctx["data_files"].items()),
            f"- evaluated in {ctx['seconds']:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in ctx["phases"].items())
            + ")", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- the stage
@tracked("evaluate")
def evaluate(params: Params, raw_dir: Path, transcripts: Path, aligned: Path, stage1_dir: Path, stage2_dir: Path,
             reports_dir: Path, ablation_dir: Path | None = None, average_model: Path | None = None,
             show_progress: bool = True, features_dir: Path | None = None,
             validation_dir: Path | None = None) -> EvaluateResult:
    """``features_dir`` defaults to ``raw_dir/../features`` and ``validation_dir`` to ``reports_dir/validation``
    (the DVC layout); ``ablation_dir`` defaults to ``reports_dir``."""
    started = time.perf_counter()
    raw_dir, reports_dir, stage1_dir, stage2_dir = Path(raw_dir), Path(reports_dir), Path(stage1_dir), Path(stage2_dir)
    ablation_dir = Path(ablation_dir) if ablation_dir is not None else reports_dir
    features_dir = Path(features_dir) if features_dir is not None else raw_dir.parent / "features"
    validation_dir = Path(validation_dir) if validation_dir is not None else reports_dir / "validation"
    model_path, alignment_path = stage2_dir / "model.pt", stage1_dir / "alignment.pt"
    for path in (model_path, alignment_path, Path(aligned)):
        if not path.is_file():
            raise EvaluateError(f"{path}: not found (run the earlier stages first)")

    # ---- metrics: the saved model, re-run
    model, inputs = load_model(model_path), model_params_inputs(model_path)
    parts = split_data(Path(aligned), raw_dir, inputs)
    if len(parts["valid"]) < 2:
        raise EvaluateError(f"{aligned}: {len(parts['valid'])} labelled validation clip(s); evaluation needs 2 or more")
    batch = params.stage2.batch_size
    preds = {s: predict(model, part, batch)[0] for s, part in parts.items()}
    splits = scored_splits(params, parts)
    metrics: dict = {s: scores(preds[s], parts[s].labels) for s in splits}
    ceil, ceiling_source = ceiling(raw_dir, parts, splits, params.evaluate.ceiling_alpha) or (None, None)
    if ceil is not None:
        metrics["ceiling"] = ceil
        metrics["fraction_of_ceiling"] = {s: metrics[s]["pearson_mean"] / ceil[s]["pearson_mean"]
                                          for s in splits if s in ceil and ceil[s]["pearson_mean"] > 0}

    phases = {"metrics": time.perf_counter() - started}

    # ---- submission (checked before the slow part: a missing test clip fails fast)
    test_ids = split_listing(raw_dir)[1].get("test")
    sub_info, paths = None, {}
    if test_ids:
        predicted = pd.DataFrame(preds["test"], index=parts["test"].ids, columns=list(EMOTIONS))
        table, filled = submission(test_ids, predicted, parts["train"].labels.mean(0),
                                   params.download.validation.max_error_fraction)
        paths["submission"] = write_text(reports_dir / "submission.csv",
                                         table.to_csv(index=False, float_format="%.6f"))
        sub_info = {"rows": len(table), "filled": filled}

    # ---- robustness: quality model as saved, average fusion from the ablation stage or trained now
    saved = torch.load(model_path, map_location="cpu", weights_only=True)["params"]
    if average_model is not None:
        if not Path(average_model).is_file():
            raise EvaluateError(f"{average_model}: average-fusion model not found")
        avg, avg_inputs = load_model(Path(average_model)), model_params_inputs(Path(average_model))
        average_source = f"`{average_model}`"
    else:
        # the saved model's own settings with average fusion: the two differ in fusion alone
        p_avg = Stage2Params.model_validate({**saved, "fusion": "average"})
        t0 = time.perf_counter()
        avg, _, _ = train_model(p_avg, params.seed, parts["train"], parts["valid"], None, log_epochs=False)
        avg_inputs = p_avg.inputs
        average_source = f"trained here with the saved model's settings ({time.perf_counter() - t0:.1f} s)"
        log.info("evaluate: average-fusion model trained in %.1f s", time.perf_counter() - t0)
    phases["average_model"] = time.perf_counter() - started - sum(phases.values())
    valid = parts["valid"]
    by_id = {c.id: c for c in list_clips(raw_dir)}
    clips = [by_id[i] for i in valid.ids]
    rob, rob_preds = robustness(params, valid, clips, _read_transcripts(Path(transcripts)), alignment_path,
                                {"quality": (model, inputs), "average": (avg, avg_inputs)}, show_progress)
    clean_diff = float(np.abs(rob_preds["clean/quality"][list(EMOTIONS)].to_numpy() - preds["valid"]).max()) if len(
        valid) else 0.0
    phases["robustness"] = time.perf_counter() - started - sum(phases.values())
    if clean_diff > 1e-3:
        log.warning("evaluate: re-decoded clean validation clips predict up to %.3g away from the stored features",
                    clean_diff)

    # ---- files
    reports_dir.mkdir(parents=True, exist_ok=True)
    paths["metrics"] = write_json(reports_dir / "metrics.json", metrics)
    per_dim = pd.DataFrame({"emotion": list(EMOTIONS)})
    for s in splits:
        per_dim[f"pearson_{s}"] = [metrics[s][f"pearson_{e}"] for e in EMOTIONS]
    for s in (ceil or {}):
        per_dim[f"ceiling_{s}"] = [ceil[s][f"pearson_{e}"] for e in EMOTIONS]
    scatter = pd.DataFrame([{"id": clip, "split": s, "emotion": e, "true": float(parts[s].labels[i, j]),
                             "predicted": float(preds[s][i, j])}
                            for s in splits for i, clip in enumerate(parts[s].ids) for j, e in enumerate(EMOTIONS)])
    weights = rob.melt(id_vars=["condition", "fusion"], value_vars=[f"weight_{m}" for m in "VAT"],
                       var_name="modality", value_name="weight")
    weights["modality"] = weights["modality"].str.removeprefix("weight_")
    plots, figures = reports_dir / "plots", reports_dir / "figures"
    paths["per_dimension"] = write_text(plots / "per_dimension.csv", per_dim.to_csv(index=False, float_format="%.6f"))
    paths["scatter"] = write_text(plots / "scatter.csv", scatter.to_csv(index=False, float_format="%.6f"))
    paths["weights"] = write_text(plots / "weights.csv", weights.to_csv(index=False, float_format="%.6f"))
    paths["per_dimension_png"] = plot_per_dimension(per_dim, figures / "per_dimension.png")
    paths["scatter_png"] = plot_scatter(scatter, figures / "scatter.png")
    paths["weights_png"] = plot_weights(rob, figures / "weights.png")
    paths["robustness_csv"] = write_text(reports_dir / "robustness.csv", rob.to_csv(index=False, float_format="%.6f"))
    rob_md = ["# Robustness (validation split)", "", _md_table(rob), "", *robustness_verdict(rob), ""]
    paths["robustness_md"] = write_text(reports_dir / "robustness.md", "\n".join(rob_md))
    rob_json = {f"{r['condition']}/{r['fusion']}": {k: v for k, v in r.items() if k not in ("condition", "fusion")}
                for r in rob.to_dict(orient="records")}  # DVC metrics want a mapping, not a list
    rob_json["check"] = {"clean_vs_stored_max_abs_diff": clean_diff}
    paths["robustness_json"] = write_json(reports_dir / "robustness.json", rob_json)

    params_fp = fingerprint(params.model_dump(mode="json"))
    data_fp, data_files = data_fingerprint(raw_dir, features_dir)
    ablation_md = ablation_dir / "ablation.md"
    ctx = {"metrics": metrics, "params": params, "splits": splits, "per_dim": per_dim, "robustness": rob,
           "clean_diff": clean_diff, "average_source": average_source, "ceiling_source": ceiling_source,
           "ablation_md": ablation_md.read_text() if ablation_md.is_file() else None,
           "stage1": _read_json(stage1_dir / "metrics.json"), "manifest": _read_json(features_dir / "manifest.json"),
           "download": _read_json(validation_dir / "download.json"),
           "transcribe": _read_json(validation_dir / "transcribe.json"), "submission": sub_info,
           "params_fp": params_fp, "data_fp": data_fp, "data_files": data_files,
           "seconds": time.perf_counter() - started, "phases": phases}
    paths["report"] = write_text(reports_dir / "report.md", report_markdown(ctx))
    seconds = time.perf_counter() - started
    log.info("evaluate done in %.1f s (%s): %s", seconds, ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()),
             ", ".join(f"{s} mean Pearson {metrics[s]['pearson_mean']:.4f}" for s in splits))
    return EvaluateResult(metrics, paths, seconds, data_fp, params_fp, rob, sub_info["filled"] if sub_info else [])
