"""Each tenant's last fitted predictor of each kind, pickled, with the count of stored runs it was
fitted on (predictor/registry.py): a restarted server, or another replica on the database, loads
it instead of fitting the same runs again. Runs are only ever added, never changed or removed,
so the sets of a tenant's runs that anyone reads grow one from another, and their count says
which set a model was fitted on."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from benchmark_db.engine import advisory_lock
from benchmark_db.schema import fitted_models as table


@dataclass(frozen=True)
class SavedModel:
    code: str  # the fitting code's hash: another release's model is not loaded
    runs: int  # the tenant's stored runs it was fitted on
    version: str
    model: bytes  # the pickled predictor


class FittedModels:
    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def get(self, tenant: str, kind: str) -> SavedModel | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(table.c.code, table.c.runs, table.c.version,
                                         table.c.model)
                               .where(table.c.tenant == tenant, table.c.kind == kind)).first()
        return None if row is None else SavedModel(row.code, row.runs, row.version,
                                                   bytes(row.model))

    def put(self, tenant: str, kind: str, saved: SavedModel) -> None:
        """Replaces the tenant's model of this kind. Of two replicas putting one at once, one
        keeps its model (the other's IntegrityError is dropped): either serves."""
        try:
            with self.engine.begin() as conn:
                conn.execute(table.delete().where(table.c.tenant == tenant, table.c.kind == kind))
                conn.execute(table.insert().values(
                    tenant=tenant, kind=kind, code=saved.code, runs=saved.runs,
                    version=saved.version, model=saved.model, fitted_at=datetime.now(UTC)))
        except IntegrityError:
            pass

    @contextmanager
    def fitting(self, tenant: str, kind: str) -> Iterator[None]:
        """Held while the tenant's model of this kind is loaded or fitted: replicas on one
        PostgreSQL take turns, so one fits and the others load what it put."""
        with advisory_lock(self.engine, f"fit/{tenant}/{kind}"):
            yield
