"""Durable storage of runs, scoped by tenant."""

import base64
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from itertools import islice

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from benchmark_db import migrate
from benchmark_db.engine import create_engine
from benchmark_db.errors import InvalidArgument, NotFound
from benchmark_db.fitted_models import FittedModels
from benchmark_db.group_commit import GroupCommitter
from benchmark_db.keys import KeyStore
from benchmark_db.run_recommendations import RunRecommendations
from benchmark_db.records import (MAX_ID_LENGTH, STORED, RunRecord, RunReport, SpecFilter,
                                  check_tenant)
from benchmark_db.schema import runs

DEFAULT_TENANT = "default"
MAX_PAGE_SIZE = 1000
# Rows per INSERT of add_many (one transaction still): the rows of a whole 200k-run import at
# once doubled its memory (1.15 GB).
INSERT_CHUNK = 5000
# Runs add_many looks up at once (one query: SQLite takes a limited number of parameters).
LOOKUP_BATCH = 500
_SPEC_COLUMNS = ("n_params", "n_active_params", "n_tokens", "seq_len", "architecture",
                 "optimizer", "weight_bits")
_HPARAM_COLUMNS = ("lr", "batch_size_tokens", "weight_decay", "qat_fraction")


class RunStore:
    """Runs in a SQL database. Every method takes the tenant: no call sees another's runs."""

    def __init__(self, url: str, *, create: bool = True):
        """create: make our schema in a new or empty database, or bring an older one forward
        (the server and the commands that add runs or keys); False: open a database that holds
        our schema already, as it is, never creating or migrating one (commands that only read
        or change what is stored). A SQLite file holding another program's tables is refused
        either way (migrate.check_database)."""
        self.url = url
        migrate.check_database(url, create)  # before the engine's first connection
        self.engine = create_engine(url)
        try:
            if create:
                migrate.upgrade(self.engine)
            elif self.engine.dialect.name != "sqlite":  # checked above for SQLite
                migrate.check_schema(self.engine,
                                     sa.make_url(url).render_as_string(hide_password=True))
        except BaseException:
            self.engine.dispose()
            raise
        self.keys = KeyStore(self.engine)  # API keys live in the same database
        self.run_recommendations = RunRecommendations(self.engine)
        self.fitted_models = FittedModels(self.engine)
        # SQLite takes one writer at a time: concurrent reports are committed in groups by one
        # thread (benchmark_db/group_commit.py). PostgreSQL handles concurrent writers itself.
        self._committer = (GroupCommitter(self.report_many) if self.engine.dialect.name == "sqlite"
                           else None)

    def close(self) -> None:
        if self._committer is not None:
            self._committer.close()
        self.engine.dispose()

    def report(self, tenant: str, report: RunReport) -> tuple[RunRecord, bool]:
        """Stores a run; returns (stored run, created). A known run_id returns the stored one.
        Returns only once the run is committed."""
        if self._committer is not None:
            return self._committer.submit((check_tenant(tenant), report))
        row = _to_row(check_tenant(tenant), report)
        try:
            with self.engine.begin() as conn:
                conn.execute(runs.insert().values(row))
        except IntegrityError:
            existing = self.find(tenant, report.run_id)
            if existing is None:  # not a duplicate run_id: some other constraint failed
                raise
            return existing, False
        return _from_row(row), True

    def report_many(self, items: Sequence[tuple[str, RunReport]]) -> list[tuple[RunRecord, bool]]:
        """Stores (tenant, report) pairs in one transaction (one commit); for each, what report()
        would return, a run_id repeated within the batch included."""
        rows = [_to_row(check_tenant(tenant), report) for tenant, report in items]
        insert = self._insert_if_new()
        results, seen = [], {}
        with self.engine.begin() as conn:
            for row in rows:
                key = (row["tenant"], row["run_id"])
                if key not in seen:
                    created = conn.execute(insert.values(row)).first() is not None
                    if not created:
                        row = conn.execute(sa.select(runs).where(
                            runs.c.tenant == key[0], runs.c.run_id == key[1])).mappings().one()
                    results.append((_from_row(row), created))
                    seen[key] = results[-1][0]
                else:
                    results.append((seen[key], False))
        return results

    def add_many(self, tenant: str, reports: Iterable[RunReport],
                 on_stored: Callable[[RunReport, RunRecord], None] | None = None) -> int:
        """Stores runs in one transaction, skipping run_ids already stored; returns how many
        were added. A run another writer stores meanwhile (an import of an overlapping file at
        the same time) is skipped too: the insert does nothing on a known run_id. reports are
        taken as they come, LOOKUP_BATCH and INSERT_CHUNK at a time: a generator of a million
        runs is never held at once. on_stored, if given, is called with each report (a repeat
        included) whose run_id the tenant had stored before, and the stored run."""
        check_tenant(tenant)
        added, ours, rows = 0, set(), []  # ours: the run_ids this call inserts
        with self.engine.begin() as conn:
            for batch in _batches(reports, LOOKUP_BATCH):
                known = self._stored(conn, tenant, {r.run_id for r in batch} - ours,
                                     records=on_stored is not None)
                for report in batch:
                    if report.run_id in known:
                        if on_stored is not None:
                            on_stored(report, known[report.run_id])
                    elif report.run_id not in ours:
                        ours.add(report.run_id)
                        rows.append(_to_row(tenant, report))
                        if len(rows) == INSERT_CHUNK:
                            added += self._insert_new(conn, rows)
                            rows = []
            if rows:
                added += self._insert_new(conn, rows)
        return added

    @staticmethod
    def _stored(conn, tenant: str, run_ids: set[str], records: bool) -> dict:
        """The stored runs among run_ids: run_id -> RunRecord if records, else -> None."""
        if not run_ids:
            return {}
        query = sa.select(runs if records else runs.c.run_id).where(
            runs.c.tenant == tenant, runs.c.run_id.in_(run_ids))
        if records:
            return {row["run_id"]: _from_row(row) for row in conn.execute(query).mappings()}
        return dict.fromkeys(conn.scalars(query))

    def _insert_new(self, conn, rows: list[dict]) -> int:
        """Inserts the rows whose run_id the tenant has not stored; returns how many."""
        return len(conn.execute(self._insert_if_new(), rows).all())

    def _insert_if_new(self):
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return (dialect.insert(runs).on_conflict_do_nothing(index_elements=["tenant", "run_id"])
                .returning(runs.c.id))  # a row back only when inserted

    def get(self, tenant: str, run_id: str) -> RunRecord:
        found = self.find(tenant, run_id)
        if found is None:
            raise NotFound(f"no run with run_id {run_id!r}")
        return found

    def page(self, tenant: str, page_size: int = 100, page_token: str = "",
             spec: SpecFilter | None = None) -> tuple[list[RunRecord], str]:
        """Newest first, only the runs of `spec` if given. Returns the runs and the token of the
        next page ('' on the last); the next page takes the same filter."""
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument.single("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")
        page_size = page_size or 100
        query = sa.select(runs).where(runs.c.tenant == tenant, *_matching(spec))
        query = query.order_by(runs.c.id.desc())
        with self.engine.connect() as conn:
            if page_token:
                query = query.where(runs.c.id < _row_after(conn, tenant, page_token))
            rows = conn.execute(query.limit(page_size + 1)).mappings().all()
        more = len(rows) > page_size
        rows = rows[:page_size]
        token = _encode_token(rows[-1]["run_id"]) if more else ""
        return [_from_row(r) for r in rows], token

    def all_runs(self, tenant: str) -> list[RunRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(runs).where(runs.c.tenant == tenant)
                                .order_by(runs.c.id)).mappings().all()
        return [_from_row(r) for r in rows]

    def tenants(self) -> list[str]:
        """Tenants that have stored runs."""
        with self.engine.connect() as conn:
            return list(conn.scalars(sa.select(runs.c.tenant).distinct()))

    def count(self, tenant: str) -> int:
        with self.engine.connect() as conn:
            return conn.scalar(sa.select(sa.func.count()).select_from(runs)
                               .where(runs.c.tenant == tenant))

    def run_counts(self) -> dict[str, int]:
        """Stored runs per tenant, in one query (replicas poll it to notice each other's runs)."""
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.select(runs.c.tenant, sa.func.count())
                                     .group_by(runs.c.tenant)).all())

    def find(self, tenant: str, run_id: str) -> RunRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(
                runs.c.tenant == tenant, runs.c.run_id == run_id)).mappings().first()
        return _from_row(row) if row else None


def _matching(spec: SpecFilter | None) -> list:
    """WHERE clauses: the runs of the filter's spec; the size ranges use the runs index on
    (tenant, n_params, n_active_params, n_tokens)."""
    if spec is None:
        return []
    clauses = [runs.c[name].between(*SpecFilter.size_range(getattr(spec, name)))
               for name in ("n_params", "n_active_params", "n_tokens")]
    return clauses + [runs.c[name] == value for name, value in spec.exact().items()]


def _batches(items: Iterable, size: int) -> Iterator[list]:
    items = iter(items)
    while batch := list(islice(items, size)):
        yield batch


def _to_row(tenant: str, report: RunReport) -> dict:
    spec, hp, outcome = report.spec, report.hyperparameters, report.outcome
    return {
        "tenant": tenant,
        "run_id": report.run_id,
        **{c: getattr(spec, c) for c in _SPEC_COLUMNS},
        "architecture": spec.architecture.value,
        "optimizer": spec.optimizer.value,
        **{c: getattr(hp, c) for c in _HPARAM_COLUMNS},
        "status": outcome.status.value,
        "final_loss": outcome.final_loss,
        "metadata": dict(report.metadata),
        "recommendation_id": report.recommendation_id,
        "trial_id": report.trial_id,
        "source": report.source,
        "created_at": datetime.now(UTC),
    }


def _from_row(row) -> RunRecord:
    created = row["created_at"]
    if created.tzinfo is None:  # SQLite keeps no zone; we always write UTC
        created = created.replace(tzinfo=UTC)
    return RunRecord.model_validate({
        "tenant": row["tenant"],
        "run_id": row["run_id"],
        "spec": {c: row[c] for c in _SPEC_COLUMNS},
        "hyperparameters": {c: row[c] for c in _HPARAM_COLUMNS},
        "outcome": {"status": row["status"], "final_loss": row["final_loss"]},
        "metadata": row["metadata"],
        "recommendation_id": row["recommendation_id"],
        "trial_id": row["trial_id"],
        "source": row["source"],
        "created_at": created,
    }, context=STORED)


def _encode_token(last_run_id: str) -> str:
    # The tenant's own run_id, not the row id: row ids count every tenant's runs, and a
    # tenant could read the others' volume off them.
    return base64.urlsafe_b64encode(f"run:{last_run_id}".encode()).decode()


def _row_after(conn: sa.Connection, tenant: str, token: str) -> int:
    """The row id of the run a page token names: the next page starts below it."""
    refused = InvalidArgument.single("page_token", "not a token this service returned")
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise refused from None
    run_id = text.removeprefix("run:")
    # A NUL would reach PostgreSQL, which cannot hold one (INTERNAL); no run_id is longer.
    if run_id == text or not 0 < len(run_id) <= MAX_ID_LENGTH or "\x00" in run_id:
        raise refused
    found = conn.execute(sa.select(runs.c.id).where(runs.c.tenant == tenant,
                                                     runs.c.run_id == run_id)).scalar()
    if found is None:  # runs are never removed: only a made-up token names no run
        raise refused
    return found
