"""Fitted predictors by name: what `--predictor prior|surface|lightgbm|auto|pfn|ensemble`
selects."""

from collections.abc import Callable
from dataclasses import dataclass

from benchmark_db.records import Pins, TrainingSpec
from predictor.argmin import ModelRecommender
from predictor.loss_model import LossModel, LossPrediction
from predictor.prior_model import PriorLossModel
from predictor.recommendation import Recommendation
from predictor.table import RunTable


@dataclass(frozen=True)
class FittedPredictor:
    """A loss model fitted on runs, and the recommender built on it."""

    model: LossModel
    recommender: ModelRecommender

    @property
    def version(self) -> str:
        return self.model.version_

    def recommend(self, spec: TrainingSpec, pins: Pins) -> Recommendation:
        return self.recommender.recommend(spec, pins)

    def predict(self, queries: RunTable) -> LossPrediction:
        return self.model.predict(queries)


def _prior() -> LossModel:
    return PriorLossModel()


def _surface() -> LossModel:
    from predictor.surface import LossSurface

    return LossSurface()


def _lightgbm() -> LossModel:
    from predictor.residual_gbm import SurfaceGBM

    return SurfaceGBM()


def _pfn() -> LossModel:
    from predictor.pfn.predictor import PFNLossModel

    return PFNLossModel()


def _auto() -> LossModel:
    from predictor.auto import AutoModel

    return AutoModel()


def _ensemble() -> LossModel:
    from predictor.ensemble import EnsembleModel

    return EnsembleModel()


def check_kind(kind: str) -> str:
    """The predictor's name, if one of MODEL_FACTORIES'; else ValueError naming them."""
    if kind not in MODEL_FACTORIES:
        raise ValueError(f"unknown predictor {kind!r}; choose from {', '.join(MODEL_FACTORIES)}")
    return kind


MODEL_FACTORIES: dict[str, Callable[[], LossModel]] = {
    "prior": _prior,
    "surface": _surface,
    "lightgbm": _lightgbm,
    "auto": _auto,
    "pfn": _pfn,
    "ensemble": _ensemble,
}


def fit_predictor(kind: str, runs: RunTable) -> FittedPredictor:
    check_kind(kind)
    model = MODEL_FACTORIES[kind]().fit(runs)
    return FittedPredictor(model=model, recommender=ModelRecommender(model, runs))
