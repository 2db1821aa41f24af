"""The domain operations the service exposes: one call per RPC."""

from benchmark_db.records import Pins, RunRecord, RunReport, TrainingSpec
from benchmark_db.store import RunStore
from predictor.prior import PriorRecommender
from predictor.recommendation import Recommendation
from predictor.registry import ModelRegistry


class RecommendationEngine:
    """Recommends from the tenant's current learned model (the published-law prior until it
    has runs) and stores what runs report back, scheduling a refit on each new run."""

    def __init__(self, store: RunStore, registry: ModelRegistry):
        self.store = store
        self.registry = registry
        self.prior = PriorRecommender()

    def recommend(self, tenant: str, spec: TrainingSpec, pins: Pins) -> Recommendation:
        predictor = self.registry.get(tenant)
        if predictor is None:
            return self.prior.recommend(spec, pins)
        return predictor.recommend(spec, pins)

    def report(self, tenant: str, report: RunReport) -> tuple[RunRecord, bool]:
        run, created = self.store.report(tenant, report)
        if created:
            self.registry.schedule_refit(tenant)
        return run, created
