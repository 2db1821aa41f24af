"""The exploit recommendation given for a run, kept so that the job resumed under its run_id
(after a preemption, a crash) trains on with the values its checkpoint was trained with, not
with what the models, refitted meanwhile, would say now."""

import hashlib
import json
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from benchmark_db.schema import run_recommendations as table


def request_key(spec: dict, pins: dict) -> str:
    """What the recommendation was for: the resolved spec and the pins (canonical JSON)."""
    text = json.dumps({"spec": spec, "pins": pins}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class RunRecommendations:
    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def get(self, tenant: str, run_id: str, key: str) -> dict | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(table.c.recommendation).where(
                table.c.tenant == tenant, table.c.run_id == run_id,
                table.c.request_key == key)).scalar()

    def keep(self, tenant: str, run_id: str, key: str, recommendation: dict) -> dict:
        """Keeps `recommendation` unless one was kept first (by a concurrent ask, another
        replica's too): returns the one kept."""
        try:
            with self.engine.begin() as conn:
                conn.execute(table.insert().values(
                    tenant=tenant, run_id=run_id, request_key=key,
                    recommendation=recommendation, created_at=datetime.now(UTC)))
            return recommendation
        except IntegrityError:
            return self.get(tenant, run_id, key)
