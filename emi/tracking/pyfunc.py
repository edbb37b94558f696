"""The registered ``emi-fusion`` pyfunc, logged as code (MLflow models-from-code), never as a pickle.

MLflow stores this file beside the model's artifacts and executes it on load, so a registered version is
the weights (torch ``weights_only`` files) plus readable source; nothing is ever unpickled.
Input: a DataFrame with a ``video`` column of video file paths. Output: one row per video (``emi predict``'s
table): ``id`` (the path), ``Filename`` (its stem), the six emotion intensities, the mean fusion weights
``weight_V/A/T``, ``status`` (``error`` for an unreadable video, whose values are empty and whose reason is in
``warning``), ``transcript`` and ``warning``.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd


class EMIFusionPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from emi.config import Params

        self.alignment_path = Path(context.artifacts["alignment"])
        self.fusion_path = Path(context.artifacts["fusion"])
        # the full params the model was trained with: inference must extract features exactly as training did
        self.params = Params.model_validate(json.loads(Path(context.artifacts["params"]).read_text("utf-8")))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from emi.predict import predict_videos  # lazy: loading the model must not pull in the encoders

        paths = [str(p) for p in model_input["video"]]
        return predict_videos(paths, self.params, self.alignment_path, self.fusion_path)


mlflow.models.set_model(EMIFusionPyfunc())
