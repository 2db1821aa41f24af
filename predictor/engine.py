"""The domain operations the service exposes: one call per RPC."""

from benchmark_db.records import Pins, RunRecord, RunReport, TrainingSpec
from benchmark_db.store import RunStore
from predictor.prior import PriorRecommender
from predictor.recommendation import Recommendation


class RecommendationEngine:
    """Recommends from the current model and stores what runs report back."""

    def __init__(self, store: RunStore):
        self.store = store
        self.recommender = PriorRecommender()

    def recommend(self, tenant: str, spec: TrainingSpec, pins: Pins) -> Recommendation:
        return self.recommender.recommend(spec, pins)

    def report(self, tenant: str, report: RunReport) -> tuple[RunRecord, bool]:
        return self.store.report(tenant, report)
