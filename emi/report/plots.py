"""Report figures (matplotlib, Agg canvas: no pyplot state, safe in threads and servers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from emi.config import EMOTIONS
from emi.evaluation.seeds import model_fusion
from emi.utils import atomic_path, write_text


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
    fusion = model_fusion(table)
    quality = table[table.fusion == fusion].set_index("condition")
    x = np.arange(len(quality))
    bottom = np.zeros(len(quality))
    for m in "VAT":
        axes[0, 0].bar(x, quality[f"weight_{m}"], 0.6, bottom=bottom, label=m)
        bottom += quality[f"weight_{m}"].fillna(0).to_numpy()
    axes[0, 0].set_xticks(x, quality.index, rotation=15)
    axes[0, 0].set(ylabel="mean fusion weight (damaged clips)", title=f"{fusion.capitalize()} fusion: weight per modality",
                   ylim=(0, 1.02))
    axes[0, 0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    fusions = list(dict.fromkeys(table.fusion))
    width = 0.8 / len(fusions)
    for k, name in enumerate(fusions):
        part = table[table.fusion == name].set_index("condition").reindex(quality.index)
        axes[0, 1].bar(x + (k - (len(fusions) - 1) / 2) * width, part["pearson_mean"], width, label=name)
    axes[0, 1].set_xticks(x, quality.index, rotation=15)
    axes[0, 1].set(ylabel="mean Pearson (valid)", title=f"{fusion.capitalize()} vs average fusion under damage")
    axes[0, 1].legend(fontsize=8)
    return _save(fig, path)


def write_plots(reports_dir: Path, per_dim: pd.DataFrame, scatter: pd.DataFrame, robustness: pd.DataFrame) -> dict:
    """The DVC plot data (``plots/*.csv``) and the report's figures (``figures/*.png``); their paths by name."""
    weights = robustness.melt(id_vars=["condition", "fusion"], value_vars=[f"weight_{m}" for m in "VAT"],
                              var_name="modality", value_name="weight")
    weights["modality"] = weights["modality"].str.removeprefix("weight_")
    data, figures = Path(reports_dir) / "plots", Path(reports_dir) / "figures"
    return {
        "per_dimension": write_text(data / "per_dimension.csv", per_dim.to_csv(index=False, float_format="%.6f")),
        "scatter": write_text(data / "scatter.csv", scatter.to_csv(index=False, float_format="%.6f")),
        "weights": write_text(data / "weights.csv", weights.to_csv(index=False, float_format="%.6f")),
        "per_dimension_png": plot_per_dimension(per_dim, figures / "per_dimension.png"),
        "scatter_png": plot_scatter(scatter, figures / "scatter.png"),
        "weights_png": plot_weights(robustness, figures / "weights.png"),
    }
