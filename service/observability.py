"""Prometheus metrics (on their own port) and structured logs that carry a request id."""

import contextvars
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               start_http_server)

if TYPE_CHECKING:
    from predictor.registry import RefitStatus

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_caller: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("caller")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class Metrics:
    """One registry per service, so several services in one process (tests) stay apart."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self._http = None  # the /metrics server, once serve() started it
        self.requests = Counter("hparamrec_requests_total", "RPCs by method and status code",
                                ("method", "code"), registry=self.registry)
        self.latency = Histogram("hparamrec_request_seconds", "RPC latency by method", ("method",),
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        # The time a call waits for a handler thread, which request_seconds leaves out: with
        # every worker busy (slow explores, a locked database) it is most of what callers see.
        self.queued = Histogram("hparamrec_request_queue_seconds",
                                "Time from a call's arrival to its handler starting",
                                buckets=LATENCY_BUCKETS, registry=self.registry)
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, ..._memory_bytes
        self.refit_seconds = Histogram("hparamrec_refit_seconds", "Duration of model refits",
                                       buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300),
                                       registry=self.registry)
        self.model_info = Gauge("hparamrec_model_info", "Active model version of each tenant (1)",
                                ("tenant", "version"), registry=self.registry)
        # Its age is time() - this: a model far older than the latest reports means refits
        # fall behind (each reads every stored run of the tenant).
        self.model_fitted = Gauge("hparamrec_model_fitted_timestamp_seconds",
                                  "When each tenant's active model was fitted (Unix time)",
                                  ("tenant",), registry=self.registry)
        self.refit_failures = Counter("hparamrec_refit_failures_total",
                                      "Refits that failed (the previous model keeps serving)",
                                      registry=self.registry)
        self._versions: dict[str, str] = {}

    def watch_refits(self, status: Callable[[], "RefitStatus"],
                     fit_process: Callable[[], int | None]) -> None:
        """Gauges read from the refit thread's status, and the refit process, at each scrape."""
        Gauge("hparamrec_refit_running_seconds", "How long the refit in progress has run (0: none)",
              registry=self.registry).set_function(lambda: status().running_seconds)
        Gauge("hparamrec_refits_pending", "Tenants waiting for a refit",
              registry=self.registry).set_function(lambda: status().pending)
        Gauge("hparamrec_fit_process_resident_memory_bytes",
              "Resident memory of the refit process (0: not running)",
              registry=self.registry).set_function(lambda: _resident_bytes(fit_process()))

    def watch_calls(self, running: Callable[[], int]) -> None:
        Gauge("hparamrec_requests_running", "Calls whose handler is running now",
              registry=self.registry).set_function(running)

    def serve(self, host: str, port: int) -> int:
        self._http, _thread = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        """Stops serving /metrics: a stopped service left it listening, its port and thread
        taken for the life of the process (an embedding application, the tests). In the
        background: its loop notices only at its next poll, up to 0.5 s later, which each stop
        waited (over the test suite's services, 3 of its 13 minutes)."""
        http, self._http = self._http, None
        if http is not None:
            def stop() -> None:
                http.shutdown()
                http.server_close()

            threading.Thread(target=stop, name="hparamrec-metrics-stop", daemon=True).start()

    def refitted(self, tenant: str, version: str, seconds: float) -> None:
        self.refit_seconds.observe(seconds)
        old = self._versions.get(tenant)
        if old is not None and old != version:
            self.model_info.remove(tenant, old)
        self._versions[tenant] = version
        self.model_info.labels(tenant, version).set(1)
        self.model_fitted.labels(tenant).set(time.time())

    def refit_failed(self, _tenant: str) -> None:
        self.refit_failures.inc()


class ObservabilityInterceptor(grpc.ServerInterceptor):
    """Outermost interceptor: gives each call a request id (the caller's `x-request-id` or a
    new one, echoed in the trailing metadata, which travels with the status in the same batch:
    sending initial metadata of its own cost a second batch per call, ~0.15 ms of server CPU
    in the load benchmark), counts it, times it, and logs failures."""

    def __init__(self, metrics: Metrics, access_log: bool = False):
        self.metrics = metrics
        self.log = logging.getLogger("hparamrec.rpc")
        self.ok_level = logging.INFO if access_log else logging.DEBUG
        # For the drain (Service.stop): gRPC runs intercept_service when it hands the service a
        # call, and the returned handler later on a worker thread.
        self.last_accepted = 0.0  # time.monotonic() of the last call handed over
        self.running = 0  # handlers executing now
        self._lock = threading.Lock()
        metrics.watch_calls(lambda: self.running)

    def intercept_service(self, continuation, handler_call_details):
        self.last_accepted = arrived = time.monotonic()
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = handler_call_details.method.rsplit("/", 1)[-1]

        def observed(request, context):
            request_id = (dict(context.invocation_metadata()).get("x-request-id")
                          or uuid.uuid4().hex[:16])[:64]
            token = _request_id.set(request_id)
            caller: dict[str, str] = {}
            caller_token = _caller.set(caller)
            context.set_trailing_metadata(request_id_metadata())
            started = time.perf_counter()
            self.metrics.queued.observe(time.monotonic() - arrived)
            code = grpc.StatusCode.OK
            with self._lock:
                self.running += 1
            try:
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:  # waited out its deadline in the queue
                    context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                  "the deadline passed before the call started")
                response = inner(request, context)
                code = context.code() or grpc.StatusCode.OK  # set without raising (health)
                return response
            except Exception:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                with self._lock:
                    self.running -= 1
                elapsed = time.perf_counter() - started
                who = "".join(f", {name} {value}" for name, value in caller.items())
                if code is grpc.StatusCode.OK and not context.is_active():
                    # Answered, but to no one: counted as what its caller saw.
                    code, who = _caller_gone(context), who + ", after the caller had gone"
                self.metrics.requests.labels(method, code.name).inc()
                self.metrics.latency.labels(method).observe(elapsed)
                level = self.ok_level if code is grpc.StatusCode.OK else logging.WARNING
                self.log.log(level, "%s %s in %.1f ms%s", method, code.name, 1000 * elapsed, who)
                _caller.reset(caller_token)
                _request_id.reset(token)

        return handler._replace(unary_unary=observed)


def _caller_gone(context) -> grpc.StatusCode:
    """What the caller of a call that ended without it saw: its deadline, or a cancel."""
    remaining = context.time_remaining()
    return (grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0
            else grpc.StatusCode.CANCELLED)


def _resident_bytes(pid: int | None) -> float:
    """A process's resident memory from /proc (Linux), 0 when there is none to read."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/statm") as f:
            return float(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0.0


def note_caller(**fields: str) -> None:
    """Who the current call is (its tenant, or the id of a key refused), for its log line."""
    caller = _caller.get(None)
    if caller is not None:
        caller.update(fields)


def request_id_metadata() -> tuple[tuple[str, str], ...]:
    """The current call's request id as metadata (ErrorInterceptor adds it to the trailing
    metadata it replaces with a status's details)."""
    return (("x-request-id", _request_id.get()),)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(log_format: str = "json", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if log_format == "json":
        formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Python's warnings (numpy's RuntimeWarnings on a degenerate fit, deprecations) would be
    # printed to stderr as bare lines among the JSON ones: they go through the handler instead.
    logging.captureWarnings(True)
