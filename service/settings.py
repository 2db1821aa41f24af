"""One settings object, built at start-up from HPARAMREC_* variables and flags, passed down."""

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HPARAMREC_", frozen=True)

    database_url: str = "sqlite:///var/hparamrec.db"
    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)
    # Handler threads. Python runs one at a time (the GIL), so more threads add switching, not
    # throughput: on 2 cores 8 served more repeated-spec Recommends than 32, with a shorter tail
    # (docs/benchmarks.md, load), and leave room beside a few slow calls (explore).
    max_workers: int = Field(default=8, ge=1)
    # Calls received but waiting for a worker; beyond this many, new ones are refused.
    max_pending_calls: int = Field(default=10_000, ge=1)
    # Requests above this size get RESOURCE_EXHAUSTED before any handler runs.
    max_message_bytes: int = Field(default=1 << 20, ge=1024)
    # How long SIGTERM waits for in-flight calls before cancelling them.
    grace_seconds: float = Field(default=10.0, ge=0)
    # Which learned model serves recommendations once a tenant has runs (see predictor/predictors.py).
    predictor: str = "auto"
    # A burst of reports within this many seconds leads to one refit.
    refit_debounce_seconds: float = Field(default=2.0, ge=0)
    # How often to look for runs stored through other replicas (or imported) and refit on them;
    # 0 switches the poll off (one replica: its own reports already trigger refits).
    refit_poll_seconds: float = Field(default=5.0, ge=0)
    # Recommendations are cached per (tenant, spec, pins) until the tenant's model changes or
    # a run is reported here, and at most this long (the lag behind runs reported through
    # another replica); 0 switches the cache off.
    recommend_cache_seconds: float = Field(default=5.0, ge=0)
    # An explore trial not reported within this many seconds of being handed out, or of its
    # last heartbeat (Heartbeat RPC), is abandoned: the next explore of its study closes it as
    # FAIL (user attr timed_out) and stops steering around it; a late report is still stored
    # and used as the user's own run. Longer than your longest run that sends no heartbeats (a
    # live trial that times out may be handed out again), and than the heartbeat interval
    # (the integrations: 600 s); 0: never. At most 100 years: beyond, a deadline is no date.
    trial_timeout_seconds: float = Field(default=7 * 24 * 3600.0, ge=0, le=100 * 365 * 86400.0)
    # Authentication off: every caller is the default tenant. For local development only;
    # `make run` sets it (on 127.0.0.1). Never implied: see service/server.py.
    auth_disabled: bool = False
    # PEM files of the server certificate and key: set both to serve TLS (one alone is an error,
    # not plaintext).
    tls_cert_file: str | None = None
    tls_key_file: str | None = Field(default=None, validate_default=True)
    # Prometheus metrics on their own port (0 picks a free one; None switches them off), on
    # metrics_host (default: host's). They name tenants and are not authenticated: a replica
    # listening on all interfaces can keep them on a private one.
    metrics_port: int | None = Field(default=9464, ge=0, le=65535)
    metrics_host: str | None = None
    log_format: Literal["json", "text"] = "json"
    # One log line per call (method, status, milliseconds); failed calls are logged anyway.
    # Off by default: at thousands of calls per second it costs a share of the one core Python
    # runs on (docs/benchmarks.md, load).
    access_log: bool = False

    @field_validator("predictor")
    @classmethod
    def _known_predictor(cls, name: str) -> str:
        from predictor.predictors import check_kind  # serve loads it anyway

        return check_kind(name)

    @field_validator("tls_key_file")
    @classmethod
    def _tls_pair(cls, key: str | None, info: ValidationInfo) -> str | None:
        cert = info.data.get("tls_cert_file")
        if key and not cert:
            raise ValueError("is set without the certificate, --tls-cert (HPARAMREC_TLS_CERT_FILE)")
        if cert and not key:
            raise ValueError("is required with --tls-cert (HPARAMREC_TLS_CERT_FILE)")
        return key
