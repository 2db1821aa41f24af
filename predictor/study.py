"""The Optuna studies of the refinement loop: one per (tenant, spec key), kept in Optuna's RDB
storage on the service's own database URL, so `optuna-dashboard <url>` and
`optuna.load_study(study_name=..., storage=<url>)` see them.

Spec key: architecture, optimizer, seq_len, weight_bits, and n_params, n_active_params,
n_tokens and the pinned values in log-bins of 2% (SIZE_BIN, 116 per decade, centred on the
powers of ten; a pinned QAT fraction in steps of 0.01, a pinned weight decay of 0 as 0), so specs that differ by float noise or a rounding of the
token count share a study. Two specs less than 2% apart may still fall on either side of a bin
edge; specs more than 2% apart never share one. Study names are
`hparamrec/<tenant>/<spec key>`; tenant names cannot contain '/', and every lookup builds the
name from the caller's tenant, so no tenant reaches another's studies.

Trial ids handed to clients are "<study id>-<trial number>"; a lookup checks that the study
belongs to the caller's tenant.
"""

import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import optuna
import sqlalchemy as sa
from optuna.distributions import FloatDistribution
from optuna.storages._cached_storage import _CachedStorage  # what load_study wraps the storage in

from benchmark_db.engine import (SQLITE_BUSY_SECONDS, advisory_lock, canonical_url,
                                 postgresql_connect_args, watch_sqlite_file)
from benchmark_db.errors import InvalidArgument
from benchmark_db.records import Pins, TrainingSpec, check_tenant
from predictor.recommendation import HYPERPARAMETERS, Recommendation

SIZE_BIN = math.log(10) / 116  # log-bins 2% wide, 116 per decade: powers of ten are centres
QAT_STEP = 0.01  # a pinned QAT fraction: steps of 0.01
SPACE_FACTOR = 10.0  # lr, batch and weight decay are searched from /10 to x10 the recommendation
PREFIX = "hparamrec"
TRIAL_ID = re.compile(r"(0|[1-9]\d{0,17})-(0|[1-9]\d{0,17})")  # as trial_id() writes them
LOG_SCALE = {"lr": True, "batch_size_tokens": True, "weight_decay": True, "qat_fraction": False}
# ln of a log axis at 0 (a weight decay of 0, met only when conditioning across studies): far
# from any positive value in length scales, so it shares only the GP's level with them.
LOG_FLOOR = 1e-12
# Studies whose finished trials stay in memory between calls (Studies.load): a few hundred
# studies of a few hundred trials are some tens of MB.
CACHED_STUDIES = 256


def _log_bin(value: float) -> str:
    if value <= 0:
        return "0"
    return f"{math.exp(round(math.log(value) / SIZE_BIN) * SIZE_BIN):.3g}"  # 3 digits tell bins apart


def bin_edges(value: float) -> tuple[float, float]:
    """The values that share `value`'s size bin, a hair wider for float rounding (callers
    compare the keys exactly): an index range on the runs table instead of a scan."""
    k = round(math.log(value) / SIZE_BIN)
    return math.exp((k - 0.5) * SIZE_BIN) * (1 - 1e-9), math.exp((k + 0.5) * SIZE_BIN) * (1 + 1e-9)


def _pin_bin(name: str, value: float) -> str:
    return f"{round(value / QAT_STEP) * QAT_STEP:.2f}" if name == "qat_fraction" else _log_bin(value)


def key_pins(spec: TrainingSpec, pins: Pins) -> dict[str, float]:
    """The pins that make a difference: a QAT fraction can only be 0 without quantization."""
    out = {k: v for k, v in pins.model_dump().items() if v is not None}
    if not spec.quantized:
        out.pop("qat_fraction", None)
    return out


def spec_key(spec: TrainingSpec, pins: Pins) -> str:
    pinned = key_pins(spec, pins)
    return " ".join([
        f"{spec.architecture.value}-{spec.optimizer.value}",
        f"N={_log_bin(spec.n_params)}", f"Na={_log_bin(spec.n_active_params)}",
        f"D={_log_bin(spec.n_tokens)}", f"seq={spec.seq_len}", f"bits={spec.weight_bits}",
        "pins=" + (",".join(f"{k}:{_pin_bin(k, pinned[k])}" for k in HYPERPARAMETERS if k in pinned)
                   or "none"),
    ])


def study_name(tenant: str, spec: TrainingSpec, pins: Pins) -> str:
    return f"{PREFIX}/{check_tenant(tenant)}/{spec_key(spec, pins)}"


def tenant_of(name: str) -> str | None:
    parts = name.split("/", 2)
    return parts[1] if len(parts) == 3 and parts[0] == PREFIX else None


@dataclass(frozen=True)
class SearchSpace:
    """Bounds of the searched hyperparameters; pinned ones (and the QAT fraction without
    quantization) are fixed. Batch bounds are whole sequences."""

    bounds: dict[str, tuple[float, float]]
    fixed: dict[str, float]
    seq_len: int

    @classmethod
    def around(cls, rec: Recommendation, spec: TrainingSpec, pins: Pins) -> "SearchSpace":
        bounds, fixed = {}, {}
        for name in HYPERPARAMETERS:
            pinned = getattr(pins, name)
            if pinned is not None:
                fixed[name] = pinned
            elif name == "qat_fraction":
                if spec.quantized:
                    bounds[name] = (0.0, 1.0)
                else:
                    fixed[name] = 0.0
            elif name == "weight_decay" and rec.weight_decay <= 0:
                fixed[name] = 0.0
            else:
                value = getattr(rec, name)
                bounds[name] = (value / SPACE_FACTOR, value * SPACE_FACTOR)
        for name, (lo, hi) in bounds.items():  # within what a run of the spec can report
            least, most = spec.feasible()[name]
            bounds[name] = (min(max(lo, least), most), max(min(hi, most), least))
        if "batch_size_tokens" in bounds:  # whole sequences (feasible()'s ends are)
            lo, hi = bounds["batch_size_tokens"]
            seq = spec.seq_len
            hi = math.floor(hi / seq) * seq
            bounds["batch_size_tokens"] = (min(hi, math.ceil(lo / seq) * seq), hi)
        return cls(bounds, fixed, spec.seq_len)

    @classmethod
    def unbounded(cls, spec: TrainingSpec) -> "SearchSpace":
        """Every hyperparameter free (the QAT fraction only with quantization) and unbounded:
        the coordinates for conditioning on the trials of all the studies of a spec, whatever
        their pins (PredictLoss). Only encode() is meaningful on it."""
        free = [n for n in HYPERPARAMETERS if n != "qat_fraction" or spec.quantized]
        fixed = {} if spec.quantized else {"qat_fraction": 0.0}
        return cls({n: (0.0, math.inf) for n in free}, fixed, spec.seq_len)

    @property
    def free(self) -> tuple[str, ...]:
        return tuple(n for n in HYPERPARAMETERS if n in self.bounds)

    def with_pins(self, pins: Pins) -> "SearchSpace":
        """The same space with the caller's own pinned values (a study's pins agree to 2%)."""
        fixed = dict(self.fixed) | {k: v for k, v in pins.model_dump().items()
                                    if v is not None and k in self.fixed}
        return SearchSpace(self.bounds, fixed, self.seq_len)

    def distributions(self) -> dict[str, FloatDistribution]:
        out = {}
        for name in HYPERPARAMETERS:
            if name in self.bounds:
                lo, hi = self.bounds[name]
                out[name] = FloatDistribution(lo, hi, log=LOG_SCALE[name])
            else:
                out[name] = FloatDistribution(self.fixed[name], self.fixed[name])
        return out

    def widened(self, params: dict[str, float]) -> dict[str, FloatDistribution]:
        """Distributions that contain the given values (a user's own configuration)."""
        out = {}
        for name, dist in self.distributions().items():
            value = params[name]
            out[name] = FloatDistribution(min(dist.low, value), max(dist.high, value), log=dist.log)
        return out

    def accepts(self, params: dict[str, float]) -> bool:
        """Whether a configuration can be a trial of this space (log axes need values > 0)."""
        return all(params[n] > 0 for n in self.free if LOG_SCALE[n])

    def encode(self, params: dict[str, np.ndarray | float]) -> np.ndarray:
        """Search coordinates (ln for log-scaled axes) of the free hyperparameters: (n, d)."""
        columns = [np.atleast_1d(np.asarray(params[n], float)) for n in self.free]
        columns = [np.log(np.maximum(c, LOG_FLOOR)) if LOG_SCALE[n] else c
                   for n, c in zip(self.free, columns)]
        if not columns:
            return np.zeros((np.size(params["lr"]), 0))
        return np.column_stack(np.broadcast_arrays(*columns))

    def decode(self, z: np.ndarray) -> dict[str, np.ndarray]:
        """Hyperparameter arrays of search coordinates, clipped to the bounds, the batch in whole
        sequences, the fixed values filled in."""
        z = np.atleast_2d(z)
        values = {n: np.exp(z[:, i]) if LOG_SCALE[n] else z[:, i] for i, n in enumerate(self.free)}
        return self.clip(values | {n: np.full(len(z), v) for n, v in self.fixed.items()})

    def clip(self, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Free values inside the bounds (the batch a whole number of sequences), fixed ones
        as given (the caller's own pins)."""
        out = {n: np.asarray(v, float) for n, v in params.items()}
        for name, (lo, hi) in self.bounds.items():
            value = out[name]
            if name == "batch_size_tokens":
                k = np.clip(np.round(value / self.seq_len), round(lo / self.seq_len),
                            round(hi / self.seq_len))
                value = k * self.seq_len
            out[name] = np.clip(value, lo, hi)
        return out

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper corners in search coordinates."""
        lo = [math.log(self.bounds[n][0]) if LOG_SCALE[n] else self.bounds[n][0] for n in self.free]
        hi = [math.log(self.bounds[n][1]) if LOG_SCALE[n] else self.bounds[n][1] for n in self.free]
        return np.array(lo, float), np.array(hi, float)

    def to_json(self) -> str:
        return json.dumps({"bounds": self.bounds, "fixed": self.fixed, "seq_len": self.seq_len})

    @classmethod
    def from_json(cls, text: str) -> "SearchSpace":
        data = json.loads(text)
        return cls({k: tuple(v) for k, v in data["bounds"].items()}, data["fixed"], data["seq_len"])


def _storage_url(url: str) -> str:
    """The URL with the driver the service installs (psycopg 3 for PostgreSQL), a SQLite
    file's as our own engine names it."""
    parsed = canonical_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("", "psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


class Studies:
    """The studies in one database, created lazily, with a lock per study: an in-process lock,
    and on PostgreSQL also an advisory lock, so replicas sharing the database serialise too."""

    def __init__(self, url: str, lock_engine: sa.Engine | None = None):
        self.url = _storage_url(url)
        self._lock_engine = lock_engine
        self._storage: optuna.storages.RDBStorage | None = None
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._trial_caches: OrderedDict[str, _CachedStorage] = OrderedDict()
        optuna.logging.set_verbosity(optuna.logging.WARNING)

    @property
    def postgresql(self) -> bool:
        return sa.make_url(self.url).get_backend_name() == "postgresql"

    def storage(self) -> optuna.storages.RDBStorage:
        with self._guard:
            if self._storage is None:
                url = sa.make_url(self.url)
                sqlite = url.get_backend_name() == "sqlite"
                kwargs = ({"connect_args": {"timeout": SQLITE_BUSY_SECONDS}} if sqlite
                          else {"pool_pre_ping": True, "connect_args": postgresql_connect_args(url)})
                with self._pg_lock("optuna-schema"):  # replicas starting together
                    self._storage = optuna.storages.RDBStorage(self.url, engine_kwargs=kwargs)
                watch_sqlite_file(self._storage.engine)
            return self._storage

    def close(self) -> None:
        if self._storage is not None:
            self._storage.engine.dispose()

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        with self._guard:
            local = self._locks.setdefault(name, threading.Lock())
        with local, self._pg_lock(name):
            yield

    def _pg_lock(self, name: str):
        return advisory_lock(self._lock_engine, name)

    def load(self, name: str, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study | None:
        storage = self.storage()
        if not self.existing([name]):  # one Core query: Optuna's ORM lookup took 3 times as long
            return None
        study = optuna.load_study(study_name=name, storage=self._trial_cache(name, storage),
                                  sampler=sampler)
        # Created but without its search space yet: another replica is creating it under the
        # study's lock (or died doing so; the next explore finishes the creation). Until then
        # it has no trials to learn from: as if it did not exist.
        return study if "space" in study.user_attrs else None

    def _trial_cache(self, name: str, storage: optuna.storages.RDBStorage) -> _CachedStorage:
        """The study's storage with Optuna's trial cache, kept between loads. Optuna wraps the
        RDB storage in a new, empty one for each load_study, so each call read every trial of
        the study again (all their params and attributes, through the ORM): most of an explore,
        exploit or PredictLoss at a few hundred trials. The cache re-reads on every read the
        trials not finished and those added since, by anyone: finished trials are all it
        keeps, and Optuna refuses to change those. A trial added with a smaller id than one
        already read would be missed, but a study's trials are only added under its lock
        (asks, tells, syncs), one committed before the next is created."""
        with self._guard:
            cache = self._trial_caches.get(name)
            if cache is None:
                cache = self._trial_caches[name] = _CachedStorage(storage)
                while len(self._trial_caches) > CACHED_STUDIES:
                    self._trial_caches.popitem(last=False)
            self._trial_caches.move_to_end(name)
            return cache

    def existing(self, names: list[str]) -> set[str]:
        """Which of these studies exist, in one query (a report checks up to 16 names)."""
        if not names:
            return set()
        studies = sa.table("studies", sa.column("study_name"))  # Optuna's RDB schema
        query = sa.select(studies.c.study_name).where(studies.c.study_name.in_(names))
        with self.storage().engine.connect() as conn:
            return set(conn.scalars(query))

    def of_spec(self, tenant: str, spec: TrainingSpec) -> list[str]:
        """Names of the tenant's studies of this spec key, whatever their pins, oldest first."""
        prefix = study_name(tenant, spec, Pins()).removesuffix("none")  # "... pins="
        studies = sa.table("studies", sa.column("study_id"), sa.column("study_name"))
        query = (sa.select(studies.c.study_name)
                 .where(studies.c.study_name.startswith(prefix, autoescape=True))
                 .order_by(studies.c.study_id))
        with self.storage().engine.connect() as conn:  # SQLite's LIKE ignores case: recheck
            return [name for name in conn.scalars(query) if name.startswith(prefix)]

    def create(self, name: str, space: SearchSpace, spec: TrainingSpec, pins: Pins,
               sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
        """The study, created with this search space unless it exists (then its own is kept)."""
        study = optuna.create_study(study_name=name, storage=self.storage(), sampler=sampler,
                                    direction="minimize", load_if_exists=True)
        if "space" not in study.user_attrs:
            study.set_user_attr("space", space.to_json())
            study.set_user_attr("spec", spec.model_dump(mode="json"))
            study.set_user_attr("pins", pins.model_dump(exclude_none=True))
        return study

    @staticmethod
    def space_of(study: optuna.Study) -> SearchSpace:
        return SearchSpace.from_json(study.user_attrs["space"])

    def find_trial(self, tenant: str, trial_id: str) -> tuple[str, int, optuna.trial.FrozenTrial]:
        """(study name, study id, trial) of one of the tenant's trials; unknown ids, and ids of
        other tenants' trials, are the same InvalidArgument."""
        unknown = InvalidArgument.single("trial_id", f"no trial {trial_id!r} in this tenant's studies "
                                                     "(use the trial_id of an explore recommendation)")
        match = TRIAL_ID.fullmatch(trial_id)
        if match is None:
            raise unknown
        study_id, number = int(match[1]), int(match[2])
        storage = self.storage()
        try:
            name = storage.get_study_name_from_id(study_id)
            # The tenant before the trial: looked up first, another tenant's trials would take
            # longer to refuse than unknown ones, and their numbers could be probed.
            if tenant_of(name) != tenant:
                raise unknown
            trial = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, number))
        except KeyError:
            raise unknown from None
        return name, study_id, trial


def trial_id(study_id: int, number: int) -> str:
    """What a client reports against: the study's id and the trial's number in it."""
    return f"{study_id}-{number}"
