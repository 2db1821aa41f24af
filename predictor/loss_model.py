"""The contract of a learned loss model (surface, LightGBM, PFN), scikit-learn style:
__init__ stores parameters, fit() learns, learned attributes end in `_`. One exception, on
purpose: the surface and `auto` also set their learned attributes in __init__, to the
published laws, so an unfitted model predicts the prior (what a store without runs serves)."""

from dataclasses import dataclass
from typing import Protocol, Self

import numpy as np

from predictor.table import RunTable


@dataclass(frozen=True)
class LossPrediction:
    """Predicted final loss (nats) per query row, with a central 80% interval."""

    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


class LossModel(Protocol):
    name: str

    def fit(self, runs: RunTable) -> Self:
        """Learns from runs; with an empty table the model falls back to the published priors."""

    def predict(self, queries: RunTable) -> LossPrediction:
        """Loss at each query row's configuration (its loss/diverged columns are ignored)."""

    @property
    def version_(self) -> str:
        """Identifies the fitted state: the model name, its config, and the data fitted on."""
