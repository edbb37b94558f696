"""``emi stage1`` on real extracted features of the tiny dataset: the model, aligned sequences, retrieval metrics."""

import numpy as np
import pytest

from emi.stages.stage1 import stage1
from emi.train.projection import load_aligned
from tests.conftest import tiny

pytestmark = pytest.mark.slow  # extract + Stage I end to end


def test_stage1_writes_aligned_sequences_and_retrieval_metrics(tiny_aligned):
    embed = tiny().stage1.embed_dim
    data, splits = load_aligned(tiny_aligned.aligned_path, "aligned")
    assert len(data) == 12 and set(splits) == {"train", "valid", "test"}
    assert all(v.shape[1] == embed and a.shape == v.shape for v, a in zip(data.visual, data.audio))
    assert data.text.shape == (12, embed)
    both, _ = load_aligned(tiny_aligned.aligned_path, "both")
    assert both.visual[0].shape[1] == embed + 519 and both.text.shape == (12, embed + 384)
    train = np.concatenate([v[:, embed:] for v, s in zip(both.visual, splits) if s == "train"])
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-4)  # encoder view standardized on the train split
    assert {"v2t_recall@1", "a2t_recall@1", "v2t_chance@1"} <= set(tiny_aligned.metrics)


def test_stage1_rerun_of_a_finished_run_resumes_and_trains_nothing(tiny_aligned, tiny_features, tiny_dataset):
    again = stage1(tiny(), tiny_features, tiny_aligned.model_path.parent, tiny_aligned.aligned_path.parent, tiny_dataset,
                   show_progress=False)
    assert again.epochs_run == 0 and again.metrics == tiny_aligned.metrics
