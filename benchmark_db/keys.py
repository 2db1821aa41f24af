"""API keys: each maps to one tenant; only a hash is stored; revocation takes effect at once
(every check reads the database, so it holds across replicas too)."""

import hashlib
import hmac
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from benchmark_db.errors import InvalidArgument, NotFound
from benchmark_db.records import check_tenant
from benchmark_db.schema import api_keys

KEY_PREFIX = "hpr"
MAX_LABEL_LENGTH = 200  # the column's size


def check_label(label: str) -> str:
    """A label is shown on one line per key (keys list): no control characters or line
    separators, and short. Empty is no label."""
    if len(label) > MAX_LABEL_LENGTH or any(unicodedata.category(c) in ("Cc", "Zl", "Zp")
                                            for c in label):
        raise InvalidArgument.single("label", f"at most {MAX_LABEL_LENGTH} characters, none of "
                                              "them a control character or line break")
    return label


@dataclass(frozen=True)
class ApiKeyInfo:
    key_id: str
    tenant: str
    label: str
    created_at: datetime
    revoked_at: datetime | None


def key_id_of(key: str) -> str | None:
    """The key's public id, if it has the shape of a key (for logs: never the secret)."""
    parts = key.split("_", 2)  # the secret part may itself contain "_"
    if len(parts) == 3 and parts[0] == KEY_PREFIX and re.fullmatch(r"[0-9a-f]{12}", parts[1]):
        return parts[1]
    return None


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def create(self, tenant: str, label: str = "") -> tuple[str, ApiKeyInfo]:
        """Returns the key (shown once, never stored) and its public record."""
        check_tenant(tenant)
        check_label(label)
        key_id = secrets.token_hex(6)
        key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        row = {"key_id": key_id, "key_hash": _hash(key), "tenant": tenant, "label": label,
               "created_at": datetime.now(UTC), "revoked_at": None}
        with self.engine.begin() as conn:
            conn.execute(api_keys.insert().values(row))
        return key, _info(row)

    def tenant_for(self, key: str) -> str | None:
        """The tenant of a valid, unrevoked key; None otherwise."""
        key_id = key_id_of(key)
        if key_id is None:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id)).mappings().first()
        if row is None or row["revoked_at"] is not None:
            return None
        return row["tenant"] if hmac.compare_digest(row["key_hash"], _hash(key)) else None

    def revoke(self, key_id: str) -> ApiKeyInfo:
        with self.engine.begin() as conn:
            conn.execute(api_keys.update().where(api_keys.c.key_id == key_id,
                                                        api_keys.c.revoked_at.is_(None))
                                .values(revoked_at=datetime.now(UTC)))
            row = conn.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id)).mappings().first()
        if row is None:
            raise NotFound(f"no API key with id {key_id!r}")
        return _info(row)

    def list(self) -> list[ApiKeyInfo]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.id)).mappings().all()
        return [_info(r) for r in rows]

    def any_active(self) -> bool:
        with self.engine.connect() as conn:
            return conn.scalar(sa.select(sa.func.count()).select_from(api_keys)
                               .where(api_keys.c.revoked_at.is_(None))) > 0


def _info(row) -> ApiKeyInfo:
    def utc(value):
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    return ApiKeyInfo(key_id=row["key_id"], tenant=row["tenant"], label=row["label"],
                      created_at=utc(row["created_at"]), revoked_at=utc(row["revoked_at"]))
