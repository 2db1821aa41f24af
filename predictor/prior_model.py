"""The published-law prior as a LossModel: Epoch base loss times (1 + bowl excess)."""

import math

import numpy as np

from benchmark_db.records import TrainingSpec
from predictor.loss_model import LossPrediction
from predictor.prior import PRIOR_VERSION, Z80, LawOptimum, law_loss
from predictor import laws
from predictor.table import RunTable


class PriorLossModel:
    """Needs no data: fit() is a no-op, so it is what the service uses on an empty store."""

    name = "prior"

    def fit(self, runs: RunTable) -> "PriorLossModel":
        return self

    @property
    def version_(self) -> str:
        return PRIOR_VERSION

    def predict(self, queries: RunTable) -> LossPrediction:
        mean = np.empty(len(queries))
        for key, rows in _rows_by_spec(queries).items():
            spec = TrainingSpec.of_sizes(*key)
            mean[rows] = law_loss(LawOptimum(spec), queries.lr[rows], queries.batch_size_tokens[rows],
                                  queries.weight_decay[rows], queries.qat_fraction[rows])
        half = Z80 * laws.EPOCH_LOSS.sd["relative"]
        return LossPrediction(mean=mean, lo=mean * math.exp(-half), hi=mean * math.exp(half))


def _rows_by_spec(table: RunTable) -> dict[tuple, np.ndarray]:
    keys = np.stack([table.n_params, table.n_active_params, table.n_tokens, table.seq_len,
                     table.weight_bits], axis=1)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    return {tuple(k): np.flatnonzero(inverse.ravel() == i) for i, k in enumerate(unique)}
