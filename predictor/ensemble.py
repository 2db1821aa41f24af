"""`ensemble`: the surface, LightGBM and PFN models averaged with equal weights, fixed in
advance (no weight is fitted, so nothing can be tuned on a held-out group).

The mean is the geometric mean of the members' predicted losses (an average in ln(loss), the
scale every member models); the 80% interval averages the members' interval ends in ln(loss)
(quantile averaging). A learning rate is allowed where every member with a divergence
boundary allows it. The optimum's spread comes from the surface's bootstrap draws, as for
the surface alone.
"""

import numpy as np

from predictor.loss_model import LossPrediction
from predictor.table import RunTable

MEMBERS = ("surface", "lightgbm", "pfn")


class EnsembleModel:
    name = "ensemble"

    def __init__(self, members: tuple[str, ...] = MEMBERS):
        self.members = members

    def fit(self, runs: RunTable) -> "EnsembleModel":
        from predictor.predictors import MODEL_FACTORIES

        self.models_ = [MODEL_FACTORIES[name]().fit(runs) for name in self.members]
        return self

    @property
    def version_(self) -> str:
        return "ensemble[" + ",".join(m.version_ for m in self.models_) + "]"

    def mean(self, q: RunTable) -> np.ndarray:
        means = [m.mean(q) if hasattr(m, "mean") else m.predict(q).mean for m in self.models_]
        return np.exp(np.mean(np.log(means), axis=0))

    def predict(self, q: RunTable) -> LossPrediction:
        predictions = [m.predict(q) for m in self.models_]
        mean, lo, hi = (np.exp(np.mean([np.log(getattr(p, end)) for p in predictions], axis=0))
                        for end in ("mean", "lo", "hi"))
        return LossPrediction(mean=mean, lo=np.minimum(lo, mean), hi=np.maximum(hi, mean))

    def lr_limit(self, q: RunTable) -> np.ndarray:
        limits = [m.lr_limit(q) for m in self.models_ if hasattr(m, "lr_limit")]
        return np.min(limits, axis=0) if limits else np.full(len(q), np.inf)

    def optimum_log_offsets(self, n_active: float, n_tokens: float) -> np.ndarray | None:
        for model in self.models_:
            if hasattr(model, "optimum_log_offsets"):
                return model.optimum_log_offsets(n_active, n_tokens)
        return None

    def spec_warnings(self, spec) -> list[str]:
        return [w for m in self.models_ if hasattr(m, "spec_warnings") for w in m.spec_warnings(spec)]

    def held_out_optimum_offsets(self) -> np.ndarray | None:
        for model in self.models_:
            if hasattr(model, "held_out_optimum_offsets"):
                return model.held_out_optimum_offsets()
        return None
