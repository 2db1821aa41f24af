"""Frozen configs: the model's shape, the training run, and their identities.

A ModelConfig builds the network (model.build_model); a checkpoint stores the PFNConfig as
JSON, with the checkpoint format version, the prior and features versions and the
training-data hash (a hash of the prior config, the features version, the training seed and
the batch layout, i.e. of everything that decides which synthetic examples the network saw)."""

import hashlib
import json
from dataclasses import asdict, dataclass, field

from predictor.pfn.features import FEATURES_VERSION
from predictor.pfn.prior import PriorConfig

CHECKPOINT_FORMAT = "pfn-checkpoint@1"


@dataclass(frozen=True)
class ModelConfig:
    n_context_features: int
    n_query_features: int
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int = 128
    n_buckets: int = 500
    dropout: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 5500
    tasks_per_step: int = 16
    queries_per_task: int = 96
    max_context: int = 500
    lr: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    # Tasks drawn (before training) to place the bar distribution's bucket borders.
    border_tasks: int = 2000
    # One thread: on the shared 2-core machine a second thread was slower under load
    # (docs/pfn.md). Results are reproducible for a given torch build and thread count.
    threads: int = 1
    # Wall-clock guard: training stops early (and the checkpoint says so) past this.
    max_minutes: float = 44.0


@dataclass(frozen=True)
class PFNConfig:
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PFNConfig":
        raw = json.loads(text)
        return cls(model=ModelConfig(**raw["model"]), train=TrainConfig(**raw["train"]),
                   prior=PriorConfig.from_dict(raw["prior"]))

    def data_hash(self) -> str:
        """Identifies the synthetic training data: the prior, the featurisation, the seed and
        the batch layout."""
        t = self.train
        data = {"prior": asdict(self.prior), "features": FEATURES_VERSION, "seed": t.seed, "steps": t.steps,
                "tasks_per_step": t.tasks_per_step, "queries_per_task": t.queries_per_task,
                "max_context": t.max_context, "border_tasks": t.border_tasks}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
