"""One settings object, built at start-up from HPARAMREC_* variables and flags, passed down."""

import os
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# A duration: finite, and within what a thread's wait accepts (an infinite or 1e300 s poll
# interval killed the poll thread with an OverflowError while the server went on serving).
Seconds = Annotated[float, Field(ge=0, le=100 * 365 * 86400.0, allow_inf_nan=False)]
DATABASES = ("sqlite", "postgresql")


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
    grace_seconds: Seconds = 10.0
    # Which learned model serves recommendations once a tenant has runs (see predictor/predictors.py).
    predictor: str = "auto"
    # A burst of reports within this many seconds leads to one refit.
    refit_debounce_seconds: Seconds = 2.0
    # How often to look for runs stored through other replicas (or imported) and refit on them;
    # 0 switches the poll off (one replica: its own reports already trigger refits); health
    # then checks the database on its own (refit_poller.HEALTH_ONLY_SECONDS).
    refit_poll_seconds: Seconds = 5.0
    # Recommendations are cached per (tenant, spec, pins) until the tenant's model changes or
    # a run is reported here, and at most this long (the lag behind runs reported through
    # another replica); 0 switches the cache off.
    recommend_cache_seconds: Seconds = 5.0
    # An explore trial not reported within this many seconds of being handed out, or of its
    # last heartbeat (Heartbeat RPC), is abandoned: the next explore of its study closes it as
    # FAIL (user attr timed_out) and stops steering around it; a late report is still stored
    # and used as the user's own run. Longer than your longest run that sends no heartbeats (a
    # live trial that times out may be handed out again), and than the heartbeat interval
    # (the integrations: 600 s); 0: never. At most 100 years: beyond, a deadline is no date.
    trial_timeout_seconds: Seconds = 7 * 24 * 3600.0
    # Authentication off: every caller is the default tenant. For local development only;
    # `make run` sets it (on 127.0.0.1). Never implied: see service/server.py.
    auth_disabled: bool = False
    # PEM files of the server certificate and key: set both to serve TLS (one alone is an error,
    # not plaintext).
    tls_cert_file: str | None = None
    tls_key_file: str | None = Field(default=None, validate_default=True)
    # Prometheus metrics on their own port (0 picks a free one; off switches them off), on
    # metrics_host (default: host's). They name tenants and are not authenticated: a replica
    # listening on all interfaces can keep them on a private one.
    metrics_port: int | None = Field(default=9464, ge=0, le=65535)
    metrics_host: str | None = None
    log_format: Literal["json", "text"] = "json"
    # One log line per call (method, status, milliseconds); failed calls are logged anyway.
    # Off by default: at thousands of calls per second it costs a share of the one core Python
    # runs on (docs/benchmarks.md, load).
    access_log: bool = False

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, url: str) -> str:
        import sqlalchemy as sa

        try:
            backend = sa.make_url(url).get_backend_name()
        except sa.exc.ArgumentError:
            raise ValueError(f"{url!r} is not a database URL (sqlite:///PATH or "
                             "postgresql://USER:PASSWORD@HOST/DATABASE)") from None
        if backend not in DATABASES:
            raise ValueError(f"{backend} is not supported: give a sqlite:///PATH or "
                             "postgresql://... URL")
        return url

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _metrics_off(cls, port):
        return None if isinstance(port, str) and port.strip().lower() in ("", "off", "none") else port

    @field_validator("tls_cert_file")
    @classmethod
    def _tls_cert_readable(cls, cert: str | None) -> str | None:
        if _readable(cert):
            _check_certificate(cert)
        return cert

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
        _readable(key)
        if cert:
            _check_pair(cert, key)
        return key


def _readable(path: str | None) -> str | None:
    """The path of a file this process can read (told at start, not at the first TLS call)."""
    if path is not None:
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    return path


# A certificate or key gRPC cannot use made it fail to bind, and the server said the port was
# in use: they are checked with the ssl module at start instead.

def _check_certificate(cert: str) -> None:
    import ssl

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=cert)
    except ssl.SSLError:
        raise ValueError(f"{cert} is not a PEM certificate") from None


def _check_pair(cert: str, key: str) -> None:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:  # an encrypted key is refused, not prompted for: gRPC cannot use one
        context.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:
        reason = ("it does not match the certificate --tls-cert" if "MISMATCH" in str(exc)
                  else "not an unencrypted PEM private key")
        raise ValueError(f"cannot use {key}: {reason}") from None


def unknown_variables(environ=os.environ) -> list[str]:
    """A line for each HPARAMREC_* variable that is neither a setting nor a client's: most
    likely misspelt, and then ignored, its setting left at the default without a word."""
    import difflib

    settings = [name.upper() for name in Settings.model_fields]
    out = []
    for name in sorted(v for v in environ if v.startswith("HPARAMREC_")):
        if name.removeprefix("HPARAMREC_") in settings or name in CLIENT_VARIABLES:
            continue
        close = difflib.get_close_matches(name.removeprefix("HPARAMREC_"), settings, n=1)
        out.append(f"{name} is not a setting, and is ignored"
                   + (f" (did you mean HPARAMREC_{close[0]}?)" if close else ""))
    return out


# Read by the client library, the CLI and the integrations, not by the server.
CLIENT_VARIABLES = {"HPARAMREC_SERVER", "HPARAMREC_API_KEY", "HPARAMREC_TLS_CA",
                    "HPARAMREC_UNSENT_DIR", "HPARAMREC_RUN_ID"}
