"""Report figures from small hand-made frames: each is written as a PNG where asked, folders created."""

import numpy as np
import pandas as pd

from emi.config import EMOTIONS
from emi.report.plots import plot_per_dimension, plot_scatter, plot_weights, write_plots
from emi.evaluation.robustness import CONDITIONS, compared_fusions

PNG = b"\x89PNG\r\n\x1a\n"


def frames(rng):
    per_dim = pd.DataFrame({"emotion": list(EMOTIONS), "pearson_valid": rng.uniform(-1, 1, 6),
                            "pearson_test": rng.uniform(-1, 1, 6), "ceiling_valid": rng.uniform(0, 1, 6)})
    scatter = pd.DataFrame([{"id": f"{i:05d}", "split": s, "emotion": e, "true": rng.uniform(),
                             "predicted": rng.uniform()} for s in ("valid", "test") for i in range(3) for e in EMOTIONS])
    table = pd.DataFrame([{"condition": c, "fusion": f, "pearson_mean": rng.uniform(-1, 1),
                           "weight_V": np.nan if c == "clean" and f == "average" else 0.3, "weight_A": 0.3,
                           "weight_T": 0.4} for c in CONDITIONS for f in compared_fusions("quality")])
    return per_dim, scatter, table


def test_figures_are_written(tmp_path):
    per_dim, scatter, table = frames(np.random.default_rng(0))
    out = tmp_path / "figures"
    paths = [plot_per_dimension(per_dim, out / "per_dimension.png"), plot_scatter(scatter, out / "scatter.png"),
             plot_weights(table, out / "weights.png")]
    assert paths == [out / "per_dimension.png", out / "scatter.png", out / "weights.png"]
    for path in paths:
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000, path
    assert sorted(p.name for p in out.iterdir()) == ["per_dimension.png", "scatter.png", "weights.png"]  # no temp left


def test_write_plots_gives_dvc_plot_data_and_figures(tmp_path):
    per_dim, scatter, table = frames(np.random.default_rng(1))
    paths = write_plots(tmp_path, per_dim, scatter, table)
    weights = pd.read_csv(paths["weights"])
    assert list(weights.columns) == ["condition", "fusion", "modality", "weight"]
    assert sorted(weights["modality"].unique()) == ["A", "T", "V"] and len(weights) == 3 * len(table)
    np.testing.assert_allclose(pd.read_csv(paths["per_dimension"])["pearson_valid"], per_dim["pearson_valid"], atol=1e-6)
    assert len(pd.read_csv(paths["scatter"])) == len(scatter)
    assert all(paths[k].read_bytes()[:8] == PNG for k in ("per_dimension_png", "scatter_png", "weights_png"))
