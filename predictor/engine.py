"""The domain operations the service exposes: one call per RPC."""

import numpy as np

from benchmark_db.records import Pins, RunRecord, RunReport, TrainingSpec
from benchmark_db.store import RunStore
from predictor import laws
from predictor.loss_model import LossPrediction
from predictor.prior import PriorRecommender
from predictor.prior_model import PriorLossModel
from predictor.recommendation import Recommendation
from predictor.registry import ModelRegistry
from predictor.table import RunTable


class RecommendationEngine:
    """Recommends from the tenant's current learned model (the published-law prior until it
    has runs) and stores what runs report back, scheduling a refit on each new run."""

    def __init__(self, store: RunStore, registry: ModelRegistry, refiner=None):
        self.store = store
        self.registry = registry
        self.prior = PriorRecommender()
        self.refiner = refiner  # predictor/refine.py: the studies of EXPLORE; None: exploit only

    def recommend(self, tenant: str, spec: TrainingSpec, pins: Pins) -> Recommendation:
        if self.refiner is not None:  # conditioned on the spec's study once it has trials
            return self.refiner.exploit(tenant, spec, pins)
        predictor = self.registry.get(tenant)
        if predictor is None:
            return self.prior.recommend(spec, pins)
        return predictor.recommend(spec, pins)

    def predict_loss(self, tenant: str, spec: TrainingSpec, lr: np.ndarray, batch_size_tokens: np.ndarray,
                     weight_decay: np.ndarray, qat_fraction: np.ndarray
                     ) -> tuple[RunTable, LossPrediction, tuple[str, ...]]:
        """Loss at each point; NaN weight decay follows the timescale rule at the point's lr and
        batch, NaN QAT fraction is the law's. Returns the completed points too."""
        predictor = self.registry.get(tenant)
        model = predictor.model if predictor is not None else PriorLossModel()
        timescale_wd = batch_size_tokens / (lr * laws.POWER_LINES_TIMESCALE(spec) * spec.n_tokens)
        queries = RunTable.queries(
            spec, lr, batch_size_tokens,
            np.where(np.isnan(weight_decay), timescale_wd, weight_decay),
            np.where(np.isnan(qat_fraction), laws.DREMOV_QAT(spec), qat_fraction))
        return queries, model.predict(queries), (model.version_,)

    def explore(self, tenant: str, spec: TrainingSpec, pins: Pins) -> Recommendation:
        """The next trial of the spec's study (Recommendation.trial_id set)."""
        if self.refiner is None:
            raise NotImplementedError("explore needs a refiner (predictor/refine.py)")
        return self.refiner.explore(tenant, spec, pins)

    def report(self, tenant: str, report: RunReport) -> tuple[RunRecord, bool]:
        if self.refiner is not None:  # an unknown trial_id is refused before anything is stored
            self.refiner.check_report(tenant, report)
        run, created = self.store.report(tenant, report)
        if created:
            self.registry.schedule_refit(tenant)
        if self.refiner is not None:  # idempotent: a re-sent run is not told twice
            self.refiner.tell(tenant, run)
        return run, created
