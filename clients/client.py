"""The typed synchronous client: pydantic models in and out, deadlines, retries, exceptions.

    from clients import Client, TrainingSpec

    with Client() as client:            # $HPARAMREC_SERVER or 127.0.0.1:50051
        rec = client.recommend(TrainingSpec(n_params="1.3B", n_tokens="100B"))

Inputs may be the models of clients/models.py, dicts of their fields, or the generated proto
messages. Every call is safe to retry (ReportRun through its run_id, chosen once per report),
so UNAVAILABLE is retried with exponential backoff; `timeout` is the deadline of each attempt.
Errors come back as the exceptions of clients/errors.py.
"""

import math
import os
import random
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import grpc

from clients import convert
from clients.errors import (ClientClosedError, ClientSettingsError, InvalidArgumentError,
                            UnimplementedError, from_rpc_error, status_code)
from clients.models import (MAX_PREDICT_POINTS, HeartbeatResult, Hyperparameters,
                            LossPredictions, Mode, Pins, Recommendation, ReportResult, Run,
                            RunPage, RunReport, TrainingSpec)
from hparamrec.v1 import recommender_pb2 as pb
from hparamrec.v1 import recommender_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
# A report given a patience is retried until it runs out, after a passed deadline too, and
# when a stopping server cancelled it: a run_id is stored once, so a report sent twice is
# harmless, and a report not sent is a run lost.
PATIENT_RETRYABLE = RETRYABLE | {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
PATIENT_BACKOFF_CAP = 5.0  # seconds between attempts, at most
# gRPC waits longer and longer between attempts to reconnect (up to 120 s), and the channels of
# a process share that wait: after a 52 s outage, calls still failed 14 s after the service was
# back. Attempts every 0.5-5 s, on a connection of the client's own. (Not the minimum: it is
# also each attempt's connect timeout, 20 s, which a slow TLS handshake may need.)
CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 500),
                   ("grpc.max_reconnect_backoff_ms", 5000),
                   ("grpc.use_local_subchannel_pool", 1))


# gRPC's own target forms (unix:/run/x.sock, dns:///host:port, ...) are passed through as given.
GRPC_SCHEMES = ("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:", "vsock:", "xds:")
_HOST_PORT = re.compile(r"(?P<host>\[[^\]]+\]|[^:\[\]]+)(?::(?P<port>[^:]*))?")


def check_target(target: str, require_port: bool = False) -> None:
    """A HOST:PORT target has a port in 1..65535 (gRPC would otherwise try another port, or
    443 when there is none: require_port, as the CLI does); ClientSettingsError if not."""
    if target.startswith(GRPC_SCHEMES):
        return
    match = _HOST_PORT.fullmatch(target)
    if "://" in target:  # gRPC would say "Misformatted domain name"
        problem = "expected HOST:PORT, not a URL (for TLS, give a CA file or tls=True)"
    elif match is None:
        if ":" in target and not require_port:
            return  # an unbracketed IPv6 address: left to gRPC
        problem = "expected HOST:PORT"
    else:
        port = match["port"]
        if port is None:
            if not require_port:
                return
            problem = "expected HOST:PORT, with the port"
        elif not (port.isdigit() and 1 <= int(port) <= 65535):
            problem = "the port must be a number from 1 to 65535"
        else:
            return
    raise ClientSettingsError(f"target: {problem} (got {target!r})",
                              [("target", f"{problem} (got {target!r})")])


def spec(**fields) -> pb.TrainingSpec:
    """Proto-level helper: a TrainingSpec message from keyword fields (None left unset), for
    code that builds request messages itself. Typed code uses models.TrainingSpec."""
    return pb.TrainingSpec(**{k: v for k, v in fields.items() if v is not None})


def check_api_key(api_key: str | None) -> str | None:
    """The key without surrounding whitespace (key files and secrets often end in a newline,
    which gRPC refuses in a header); ClientSettingsError if what is left is not printable
    ASCII without spaces, as every key is."""
    if api_key is None:
        return None
    key = api_key.strip()
    if not all("!" <= c <= "~" for c in key):
        raise ClientSettingsError("api_key: only printable ASCII without spaces can be a key",
                                  [("api_key", "only printable ASCII without spaces can be a key")])
    return key or None


@dataclass(frozen=True)
class Settings:
    """How to reach the service; each field falls back to its HPARAMREC_* variable."""

    target: str
    metadata: tuple[tuple[str, str], ...]
    tls: bool
    root_certificates: bytes | None

    @classmethod
    def resolve(cls, target: str | None, api_key: str | None, tls: bool,
                tls_ca: str | None) -> "Settings":
        target = target or os.environ.get("HPARAMREC_SERVER") or DEFAULT_TARGET
        check_target(target)
        api_key = check_api_key(api_key or os.environ.get("HPARAMREC_API_KEY"))
        tls_ca = tls_ca or os.environ.get("HPARAMREC_TLS_CA")
        roots = None
        if tls_ca:
            try:
                with open(tls_ca, "rb") as f:
                    roots = f.read()
            except OSError as exc:
                raise ClientSettingsError(
                    f"tls_ca: cannot read {tls_ca}",
                    [("tls_ca", f"cannot read {tls_ca}: {exc.strerror}")]) from None
            if b"-----BEGIN CERTIFICATE-----" not in roots:
                # gRPC would only fail at the handshake, as an unreachable server, after
                # logging its own lines.
                raise ClientSettingsError(
                    f"tls_ca: {tls_ca} holds no PEM certificate",
                    [("tls_ca", f"{tls_ca} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")])
        metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        return cls(target, metadata, bool(tls or tls_ca), roots)

    def open_channel(self, channels=grpc):
        """A channel to the target; `channels` is grpc, or grpc.aio for the async client."""
        if self.tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=self.root_certificates)
            return channels.secure_channel(self.target, credentials, CHANNEL_OPTIONS)
        return channels.insecure_channel(self.target, CHANNEL_OPTIONS)


def seconds(name: str, value, *, zero: bool = False, error=InvalidArgumentError) -> float:
    """A deadline or a patience, checked before any call: -1 was sent and came back as a
    deadline exceeded, "5" failed inside gRPC. zero: 0 is allowed (a patience of none)."""
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or value < 0 or (value == 0 and not zero)):
        rule = "a finite number of seconds, " + (">= 0" if zero else "> 0")
        raise error(f"{name}: {rule} (got {value!r})", [(name, f"{rule} (got {value!r})")])
    return float(value)


def backoff(attempt: int, cap: float = 2.0) -> float:
    """Seconds to wait before retry number attempt + 1: 0.1, 0.2, 0.4, ... capped, +-50%."""
    return min(cap, 0.1 * 2**attempt) * random.uniform(0.5, 1.5)


def retry_wait(code: grpc.StatusCode, attempt: int, retries: int, patience: float | None,
               elapsed: float) -> float | None:
    """Seconds to wait before the next attempt of a call that failed with `code`, or None to
    give up: UNAVAILABLE is retried `retries` times; with a patience (reports), the codes of
    PATIENT_RETRYABLE until `patience` seconds have gone by since the first attempt."""
    if patience is None:
        return backoff(attempt) if code in RETRYABLE and attempt < retries else None
    wait = backoff(attempt, PATIENT_BACKOFF_CAP)
    return wait if code in PATIENT_RETRYABLE and elapsed + wait <= patience else None


# Requests and responses, shared by Client and AsyncClient.

def check_open(closed: bool, call: str) -> None:
    if closed:
        raise ClientClosedError(call)


def call_name(request) -> str:
    """The RPC a request is for, as the proto names it (ReportRunRequest: ReportRun)."""
    return type(request).__name__.removesuffix("Request")


def recommend_request(training_spec, pins, mode, run_id: str = "") -> pb.RecommendRequest:
    request = pb.RecommendRequest(spec=convert.to_proto(
                                      convert.coerce(training_spec, TrainingSpec, "spec"), "spec"),
                                  mode=_mode(mode), run_id=run_id)
    if pins is not None:
        request.pins.CopyFrom(convert.to_proto(convert.coerce(pins, Pins, "pins"), "pins"))
    return request


def _mode(mode) -> int:
    if isinstance(mode, int) and not isinstance(mode, bool):  # a proto enum value (pb.MODE_EXPLORE)
        if not -2**31 <= mode < 2**31:  # protobuf's own ValueError, naming no field
            raise InvalidArgumentError(f"mode: not a Mode value (got {mode})",
                                       [("mode", f"not a Mode value (got {mode})")])
        return mode
    try:
        mode = Mode(mode)
    except ValueError:
        choices = ", ".join(m.value for m in Mode if m is not Mode.UNSPECIFIED)
        raise InvalidArgumentError(f"mode: one of {choices} (got {mode!r})",
                                   [("mode", f"one of {choices} (got {mode!r})")]) from None
    return pb.Mode.Value(convert.enum_prefix("Mode") + mode.value.upper())


def report_request(report, fields: dict) -> pb.ReportRunRequest:
    """The request of a report (a RunReport, a dict or a ReportRunRequest) or of keyword fields,
    with a random run_id when none is given: chosen here, once, so retries reuse it."""
    if report is None:  # keyword fields: refused as a dict of them would be, not by pydantic
        report = fields
    elif fields:
        raise TypeError("give a report or keyword fields, not both")
    report = convert.coerce(report, RunReport)
    if not report.run_id:
        report = report.model_copy(update={"run_id": uuid.uuid4().hex})
    return convert.to_proto(report)


def list_runs_request(page_size: int, page_token: str, training_spec) -> pb.ListRunsRequest:
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 0 <= page_size < 2**31:
        reason = f"a whole number, 0 (the server's default) or more (got {page_size!r})"
        raise InvalidArgumentError(f"page_size: {reason}", [("page_size", reason)])
    request = pb.ListRunsRequest(page_size=page_size, page_token=page_token)
    if training_spec is not None:
        request.spec.CopyFrom(convert.to_proto(convert.coerce(training_spec, TrainingSpec, "spec"),
                                               "spec"))
    return request


def heartbeat_request(trial_id: str, interval_seconds: float = 0.0) -> pb.HeartbeatRequest:
    return pb.HeartbeatRequest(trial_id=trial_id, interval_seconds=interval_seconds)


def page_of(response: pb.ListRunsResponse, request: pb.ListRunsRequest) -> RunPage:
    """The page, refused when the request filtered by spec and the server did not say it did: a
    server from before the filter ignores it and lists every run, which must not pass for the
    spec's runs."""
    if request.HasField("spec") and not response.spec_filtered:
        raise UnimplementedError("this server does not filter runs by spec (it predates the "
                                 "filter) and would list every run: upgrade it, or list "
                                 "without a spec")
    return convert.from_proto(response)


def predict_loss_request(training_spec, points: Iterable) -> pb.PredictLossRequest:
    points = list(points)
    if not 1 <= len(points) <= MAX_PREDICT_POINTS:  # as the service would: before sending them
        reason = f"give 1 to {MAX_PREDICT_POINTS} points, got {len(points)}"
        raise InvalidArgumentError(f"points: {reason}", [("points", reason)])
    return pb.PredictLossRequest(
        spec=convert.to_proto(convert.coerce(training_spec, TrainingSpec, "spec"), "spec"),
        points=[convert.to_proto(convert.coerce(p, Hyperparameters, f"points[{i}]"), f"points[{i}]")
                for i, p in enumerate(points)])


class Client:
    """A connection to the service. Thread-safe; close it (or use `with`) when done.

    target defaults to $HPARAMREC_SERVER, then 127.0.0.1:50051; api_key to $HPARAMREC_API_KEY;
    tls_ca (a PEM file, default $HPARAMREC_TLS_CA) or tls=True (system roots) switch to TLS.
    timeout is the deadline of each attempt in seconds; UNAVAILABLE is retried `retries` times.
    """

    def __init__(self, target: str | None = None, *, api_key: str | None = None,
                 timeout: float = 10.0, retries: int = 3, tls: bool = False,
                 tls_ca: str | None = None):
        self.settings = Settings.resolve(target, api_key, tls, tls_ca)
        self.target = self.settings.target
        self.timeout = seconds("timeout", timeout, error=ClientSettingsError)
        self.retries = retries
        self._channel = self.settings.open_channel()
        self._closed = False
        self.stub = pb_grpc.RecommenderServiceStub(self._channel)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._channel.close()

    def recommend(self, spec: TrainingSpec | dict | pb.TrainingSpec,
                  pins: Pins | dict | pb.Pins | None = None, mode: Mode | str | int = Mode.EXPLOIT,
                  *, run_id: str = "", timeout: float | None = None,
                  patience: float | None = None) -> Recommendation:
        """The recommended hyperparameters for a spec; pinned ones are kept and the rest are
        their conditional optimum. run_id (optional) names the run the answer is for: asking
        again for the same run (and spec and pins) returns the same recommendation, or with
        mode="explore" the same trial while it is running, so a resumed job keeps its values.
        patience: as for report_run (with an explore, give the run_id: a retry after a passed
        deadline then gets the trial the first attempt may have opened)."""
        response = self._call(self.stub.Recommend, recommend_request(spec, pins, mode, run_id),
                              timeout, patience)
        return convert.from_proto(response.recommendation)

    def report_run(self, report: RunReport | dict | pb.ReportRunRequest | None = None, /, *,
                   timeout: float | None = None, patience: float | None = None,
                   **fields) -> ReportResult:
        """Stores a finished, diverged or failed run: report_run(RunReport(...)) or
        report_run(spec=..., hyperparameters=..., outcome=RunOutcome.completed(2.41), run_id=...).
        Re-sending a run_id stores nothing new (`created` is then False). patience: keep trying
        for up to this many seconds while the service is unreachable or slow (see retry_wait),
        e.g. through a restart; default: `retries` attempts, as any call."""
        response = self._call(self.stub.ReportRun, report_request(report, fields), timeout,
                              patience)
        return convert.from_proto(response)

    def list_runs(self, page_size: int = 100, page_token: str = "", *,
                  spec: TrainingSpec | dict | pb.TrainingSpec | None = None,
                  timeout: float | None = None) -> RunPage:
        """One page of stored runs, newest first; with `spec`, only the runs of that spec
        (sizes equal to float noise; seq_len, architecture and weight_bits where given). Pass
        the same spec with every page_token. A server from before the filter would list every
        run: UnimplementedError (page_of)."""
        request = list_runs_request(page_size, page_token, spec)
        return page_of(self._call(self.stub.ListRuns, request, timeout), request)

    def iter_runs(self, limit: int | None = None, page_size: int = 500, *,
                  spec: TrainingSpec | dict | pb.TrainingSpec | None = None) -> Iterator[Run]:
        """Stored runs, newest first, fetched page by page; at most `limit` if given; with
        `spec`, only the runs of that spec (as list_runs)."""
        token, seen = "", 0
        while limit is None or seen < limit:
            size = page_size if limit is None else min(page_size, limit - seen)
            page = self.list_runs(size, token, spec=spec)
            for run in page.runs:
                yield run
                seen += 1
            token = page.next_page_token
            if not token:
                return

    def get_run(self, run_id: str, *, timeout: float | None = None) -> Run:
        response = self._call(self.stub.GetRun, pb.GetRunRequest(run_id=run_id), timeout)
        return convert.from_proto(response.run)

    def predict_loss(self, spec: TrainingSpec | dict | pb.TrainingSpec,
                     points: Iterable[Hyperparameters | dict | pb.Hyperparameters], *,
                     timeout: float | None = None) -> LossPredictions:
        """The predicted final loss at each point (at most 10000); an unset weight decay
        follows the timescale rule at the point's lr and batch size."""
        response = self._call(self.stub.PredictLoss, predict_loss_request(spec, points), timeout)
        return convert.from_proto(response)

    def heartbeat(self, trial_id: str, *, interval_seconds: float = 0.0,
                  timeout: float | None = None) -> HeartbeatResult:
        """Says the run of an explore trial (Recommendation.trial_id) is still going, so the
        trial does not time out while heartbeats keep coming. interval_seconds: how often you
        send them (optional); the trial is then given up after 3 missed ones, sooner than the
        server's time-out, if the run dies. A finished trial is not revived: check `.running`
        (`.state` says how it ended, e.g. timed_out: report the run anyway, it then counts as a
        configuration of its own). Unknown trial ids: InvalidArgumentError."""
        response = self._call(self.stub.Heartbeat, heartbeat_request(trial_id, interval_seconds),
                              timeout)
        return convert.from_proto(response)

    def health(self, service: str = "") -> str:
        """'SERVING' when the service (or the named one) is up."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        check_open(self._closed, "Health")  # a stub made on a closed channel crashes gRPC
        stub = health_pb2_grpc.HealthStub(self._channel)
        response = self._call(stub.Check, health_pb2.HealthCheckRequest(service=service), None)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def _call(self, method, request, timeout: float | None, patience: float | None = None):
        timeout = self.timeout if timeout is None else seconds("timeout", timeout)
        patience = None if patience is None else seconds("patience", patience, zero=True)
        started, attempt = time.monotonic(), 0
        while True:
            check_open(self._closed, call_name(request))
            try:
                return method(request, timeout=timeout, metadata=self.settings.metadata)
            except ValueError:  # closed by another thread during the call
                check_open(self._closed, call_name(request))
                raise
            except grpc.RpcError as error:
                wait = retry_wait(status_code(error), attempt, self.retries, patience,
                                  time.monotonic() - started)
                if wait is None:
                    raise from_rpc_error(error, self.target, timeout, self.settings.tls) from None
                time.sleep(wait)
                attempt += 1
