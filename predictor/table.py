"""Runs as numpy columns: what the learned models fit on and predict for."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import numpy as np

from benchmark_db.records import RunReport, RunStatus, TrainingSpec

GROUP_COLUMNS = ("n_params", "n_active_params", "n_tokens")


# Completed runs a group needs for its optimum to be placed (a 1-D lr sweep has 5 or more).
MIN_SWEEP_RUNS = 5


@dataclass(frozen=True)
class RunTable:
    """One row per run (or per query configuration). `loss` is NaN where unknown; `diverged`
    marks runs whose loss blew up (the learning rate was too high). Failed runs (hardware,
    preemption) say nothing about hyperparameters and are never in a table."""

    n_params: np.ndarray
    n_active_params: np.ndarray
    n_tokens: np.ndarray
    seq_len: np.ndarray
    weight_bits: np.ndarray
    lr: np.ndarray
    batch_size_tokens: np.ndarray
    weight_decay: np.ndarray
    qat_fraction: np.ndarray
    loss: np.ndarray
    diverged: np.ndarray

    @classmethod
    def from_runs(cls, runs: Iterable[RunReport]) -> "RunTable":
        rows = [r for r in runs if r.outcome.status is not RunStatus.FAILED]
        spec_cols = ("n_params", "n_active_params", "n_tokens", "seq_len", "weight_bits")
        hp_cols = ("lr", "batch_size_tokens", "weight_decay", "qat_fraction")
        data = {c: np.array([getattr(r.spec, c) for r in rows], dtype=float) for c in spec_cols}
        data |= {c: np.array([getattr(r.hyperparameters, c) for r in rows], dtype=float)
                 for c in hp_cols}
        data["loss"] = np.array([np.nan if r.outcome.final_loss is None else r.outcome.final_loss
                                 for r in rows], dtype=float)
        data["diverged"] = np.array([r.outcome.status is RunStatus.DIVERGED for r in rows], dtype=bool)
        return cls(**data)

    @classmethod
    def queries(cls, spec: TrainingSpec, lr, batch_size_tokens, weight_decay, qat_fraction) -> "RunTable":
        """Configurations to predict for one spec (the hyperparameter arrays broadcast)."""
        lr, batch, wd, qat = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in
                                                   (lr, batch_size_tokens, weight_decay, qat_fraction)))
        n = lr.size
        full = lambda v: np.full(n, float(v))  # noqa: E731
        return cls(n_params=full(spec.n_params), n_active_params=full(spec.n_active_params),
                   n_tokens=full(spec.n_tokens), seq_len=full(spec.seq_len),
                   weight_bits=full(spec.weight_bits), lr=lr.ravel().copy(),
                   batch_size_tokens=batch.ravel().copy(), weight_decay=wd.ravel().copy(),
                   qat_fraction=qat.ravel().copy(), loss=np.full(n, np.nan),
                   diverged=np.zeros(n, dtype=bool))

    def __len__(self) -> int:
        return len(self.lr)

    def subset(self, index) -> "RunTable":
        return RunTable(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @classmethod
    def concat(cls, tables: Sequence["RunTable"]) -> "RunTable":
        return cls(**{f.name: np.concatenate([getattr(t, f.name) for t in tables])
                      for f in fields(cls)})

    def swept(self) -> "RunTable":
        """The completed runs of the groups swept enough to place their optimum (at least
        MIN_SWEEP_RUNS completed), or all completed runs if no group is: the sizes a learned
        optimum is trusted at. One run at a new size says its loss, not where its optimum lies;
        counted, it moved the trusted box and the batch of far specs by 30%."""
        done = self.subset(self.completed)
        if not len(done):
            return done
        ids = done.group_ids()
        swept = np.bincount(ids)[ids] >= MIN_SWEEP_RUNS
        return done.subset(swept) if swept.any() else done

    def group_ids(self) -> np.ndarray:
        """An integer per row, equal for rows of one (n_params, n_active_params, n_tokens)."""
        keys = np.stack([getattr(self, c) for c in GROUP_COLUMNS], axis=1)
        _, ids = np.unique(keys, axis=0, return_inverse=True)
        return ids.ravel()

    @property
    def completed(self) -> np.ndarray:
        return ~self.diverged & np.isfinite(self.loss)
