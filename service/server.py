"""Server lifecycle: build_server() for tests and embedding, serve() for the command line."""

import errno
import gc
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from benchmark_db.engine import created_new_database, sqlite_file
from benchmark_db.migrate import check_database
from benchmark_db.store import RunStore
from hparamrec.v1 import recommender_pb2 as pb
from hparamrec.v1 import recommender_pb2_grpc as pb_grpc
from predictor.engine import RecommendationEngine
from predictor.refine import Refiner
from predictor.registry import ModelRegistry
from service.auth import AuthInterceptor, is_loopback
from service.errors import ErrorInterceptor
from service.observability import Metrics, ObservabilityInterceptor
from service.refit_poller import RefitPoller
from service.handlers import RecommenderServicer
from service.settings import Settings, unknown_variables
from service.sqlite_lock import SqliteFileTaken, hold_sqlite_file, release_sqlite_file

log = logging.getLogger("hparamrec.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RecommenderService"].full_name
# Health of the learned models: SERVING once every tenant stored at start has had its first
# refit (till then its answers come from the published laws), and as the others after that.
# What a load balancer checks to send calls to a replica only once it answers as the others.
WARM_SERVICE_NAME = "hparamrec.warm"
CORE_PENDING_CALLS = 100_000


class Service:
    """A built, not yet started, server with the pieces a test or serve() needs to reach."""

    def __init__(self, settings: Settings):
        self.settings = settings
        database_file = sqlite_file(settings.database_url)
        created = database_file is not None and not database_file.exists()
        self.store = RunStore(settings.database_url)
        if created:  # first start, or a --db typo, or a volume not mounted
            log.warning("%s (there was none: if runs were stored, check --db / "
                        "HPARAMREC_DATABASE_URL and that its volume is mounted)",
                        created_new_database(database_file))
        try:
            self._assemble(settings)
        except BaseException:  # refused settings, a port in use: no threads or engines left
            self._close_parts()
            raise

    def _assemble(self, settings: Settings) -> None:
        self.metrics = Metrics()
        self.registry = ModelRegistry(self.store, settings.predictor,
                                      settings.refit_debounce_seconds, on_refit=self.metrics.refitted,
                                      on_refit_failed=self.metrics.refit_failed)
        self.metrics.watch_refits(self.registry.status, lambda: self.registry.fit_worker_pid)
        self.refiner = Refiner(self.store, self.registry,  # Optuna studies: EXPLORE and reports
                               trial_timeout_seconds=settings.trial_timeout_seconds)
        self.engine = RecommendationEngine(self.store, self.registry, self.refiner,
                                           cache_seconds=settings.recommend_cache_seconds)
        self.refit_poller = RefitPoller(self.store, self.registry, settings.refit_poll_seconds,
                                        on_database=self._database_reachable)
        self.health = health.HealthServicer()
        self._database_ok = True
        self._warm = False
        check_auth_configuration(settings, self.store)
        limit = settings.max_message_bytes
        self.observer = ObservabilityInterceptor(self.metrics, access_log=settings.access_log)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.max_workers,
                                       thread_name_prefix="hparamrec-rpc"),
            # The first is outermost: the key lookup runs inside ErrorInterceptor, so a database
            # out of reach there is UNAVAILABLE too.
            interceptors=[self.observer, ErrorInterceptor(),
                          AuthInterceptor(None if settings.auth_disabled else self.store.keys)],
            # The calls at work or waiting for a worker: more are RESOURCE_EXHAUSTED at once.
            maximum_concurrent_rpcs=settings.max_workers + settings.max_pending_calls,
            options=[("grpc.max_receive_message_length", limit),
                     ("grpc.max_send_message_length", 4 * limit),
                     # gRPC's core sheds calls (CANCELLED, never reaching a handler) at random
                     # once more than this many arrive before the server takes them in (1,000
                     # by default): well above any limit above, which then says no instead.
                     ("grpc.server.max_pending_requests", CORE_PENDING_CALLS),
                     ("grpc.server.max_pending_requests_hard_limit", CORE_PENDING_CALLS),
                     # gRPC binds with SO_REUSEPORT by default: a second server on a port in
                     # use would start, and clients' calls be split between two databases.
                     ("grpc.so_reuseport", 0)],
        )
        pb_grpc.add_RecommenderServiceServicer_to_server(
            RecommenderServicer(self.engine, self.store), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        address = f"{host}:{settings.port}"
        try:
            if settings.tls_cert_file:
                self.port = self.server.add_secure_port(address, _tls_credentials(settings))
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError:  # what grpc raises when it cannot bind
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen on {settings.host}:{settings.port}: the port is in use "
                          "or the host is not an address of this machine")

    def start(self) -> None:
        self.server.start()
        self.metrics_port = None
        if self.settings.metrics_port is not None:
            host = self.metrics_host
            try:
                self.metrics_port = self.metrics.serve(host, self.settings.metrics_port)
            except OSError as exc:
                self.server.stop(None)
                self._close_parts()
                raise OSError(_metrics_error(self.settings, exc.strerror or str(exc))) from None
        stored = self.store.tenants()
        for tenant in stored:  # learn from what is already stored, in the background
            self.registry.schedule_refit(tenant, at_once=True)
        self.refit_poller.start()
        self._set_health()
        threading.Thread(target=self._warm_up, args=(stored,), name="hparamrec-warm-up",
                         daemon=True).start()

    def _warm_up(self, tenants: list[str]) -> None:
        started = time.monotonic()
        while any(self.registry.busy(t) for t in tenants) and not self.registry.closed:
            time.sleep(0.1)
        if self.registry.closed:  # stopped first (its refits abandoned): it never was warm
            return
        self._warm = True
        self._set_health()
        if tenants:
            log.info("warm: the first refits of the %d stored tenant(s) took %.1f s",
                     len(tenants), time.monotonic() - started)

    def _set_health(self) -> None:
        """"" and SERVICE_NAME follow the database; WARM_SERVICE_NAME too, once warm. (Once
        draining, set() is a no-op: the server stays NOT_SERVING.)"""
        serving, not_serving = (health_pb2.HealthCheckResponse.SERVING,
                                health_pb2.HealthCheckResponse.NOT_SERVING)
        status = serving if self._database_ok else not_serving
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)
        self.health.set(WARM_SERVICE_NAME, status if self._warm else not_serving)

    @property
    def metrics_host(self) -> str:
        return _metrics_host(self.settings)

    def _database_reachable(self, reachable: bool) -> None:
        """Health follows the database: NOT_SERVING while it is out of reach, so probes and load
        balancers send calls to replicas that can answer them."""
        if reachable != self._database_ok:
            log.log(logging.INFO if reachable else logging.ERROR, "health: %s",
                    "SERVING again: the database answers" if reachable
                    else "NOT_SERVING: the database is out of reach, or takes no writes")
        self._database_ok = reachable
        self._set_health()

    def stop(self, grace: float | None = None) -> None:
        """Stops taking calls, lets in-flight ones finish within `grace` seconds, closes the store."""
        grace = self.settings.grace_seconds if grace is None else grace
        deadline = time.monotonic() + grace
        self.health.enter_graceful_shutdown()
        self._settle(until=deadline - grace / 2)
        with _said_if_slow("draining in-flight calls"):
            self.server.stop(max(0.0, deadline - time.monotonic())).wait()
        with _said_if_slow("stopping the poll for other replicas' runs"):
            self.refit_poller.stop()
        self.metrics.close()
        self.registry.close()  # says so if it leaves a refit behind
        self.refiner.close()
        with _said_if_slow("committing the last queued runs"):  # a locked SQLite file: 5 s
            self.store.close()

    def _close_parts(self) -> None:
        """What a server that never served must still close: the metrics server, the refit
        thread and process, the studies' engine, the store (with its writer thread)."""
        for part in ("metrics", "registry", "refiner", "store"):
            if hasattr(self, part):
                getattr(self, part).close()

    def _settle(self, until: float) -> None:
        """server.stop() cancels the calls gRPC has received but not yet handed to a handler
        (a burst can leave hundreds waiting: the thread that hands them over competes with busy
        handlers). So first keep taking calls until none has come for a moment (longer while
        handlers run, as they slow the hand-over: on 2 busy cores, with a refit in its process,
        0.5 s once let received calls be cancelled), for at most half the grace period."""
        while time.monotonic() < until:
            quiet = 0.05 if self.observer.running == 0 else 1.0
            if time.monotonic() - self.observer.last_accepted >= quiet:
                return
            time.sleep(0.01)


@contextmanager
def _said_if_slow(step: str, seconds: float = 1.0) -> Iterator[None]:
    """Logs a shutdown step that took longer than `seconds`, so a slow exit says why."""
    started = time.monotonic()
    yield
    took = time.monotonic() - started
    if took > seconds:
        log.info("shutting down: %s took %.1f s", step, took)


def _metrics_host(settings: Settings) -> str:
    return settings.host if settings.metrics_host is None else settings.metrics_host


def _metrics_error(settings: Settings, reason: str) -> str:
    return (f"cannot serve metrics on {_metrics_host(settings)}:{settings.metrics_port} "
            f"(--metrics-host, --metrics-port; HPARAMREC_METRICS_HOST, HPARAMREC_METRICS_PORT): "
            f"{reason}")


_BIND_ERRORS = {errno.EADDRINUSE: "the port is in use",
                errno.EADDRNOTAVAIL: "the host is not an address of this machine",
                errno.EACCES: "permission denied (ports below 1024 need privileges)"}


def _why_not_listenable(host: str, port: int) -> str | None:
    """Why (host, port) cannot be listened on now, or None: a plain socket is bound and let go."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror:
        return "the host is not an address of this machine"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            probe.bind(address)
        except OSError as exc:
            return _BIND_ERRORS.get(exc.errno, exc.strerror or str(exc))
    return None


def check_ports(settings: Settings) -> None:
    """OSError, in one line, unless the service's ports can be listened on: told before the
    database is opened or made, and before gRPC logs a line of its own. The server still binds
    for real, and says so if the port was taken in between."""
    why = _why_not_listenable(settings.host, settings.port)
    if why:
        raise OSError(f"cannot listen on {settings.host}:{settings.port}: {why}")
    if settings.metrics_port:  # None: off; 0: any free port
        why = _why_not_listenable(_metrics_host(settings), settings.metrics_port)
        if why:
            raise OSError(_metrics_error(settings, why))


class ConfigurationError(Exception):
    """Settings that would make the server unsafe or unusable: it refuses to start."""


def check_auth_configuration(settings: Settings, store: RunStore) -> None:
    """Authentication is off only when asked; with no keys it is never off by accident."""
    if settings.auth_disabled:
        if not is_loopback(settings.host):
            log.warning("authentication is DISABLED on %s: every caller is one tenant", settings.host)
        if store.keys.any_active():
            log.warning("authentication is DISABLED although API keys exist: calls that send "
                        "one are refused, the others all act on the default tenant")
        return
    if store.keys.any_active():
        return
    refuse_without_keys(settings)
    log.warning("no API keys exist: every call will be refused as UNAUTHENTICATED until one is "
                "created (`hparamrec keys create`) or the server runs with --no-auth")


def refuse_without_keys(settings: Settings) -> None:
    """ConfigurationError for a server with authentication on, no API keys, beyond loopback."""
    if not settings.auth_disabled and not is_loopback(settings.host):
        raise ConfigurationError(
            f"refusing to listen on {settings.host} with no API keys: create one with "
            "`hparamrec keys create --db URL --tenant NAME`, or switch authentication off "
            "explicitly with --no-auth (HPARAMREC_AUTH_DISABLED=1)")


def _tls_credentials(settings: Settings) -> grpc.ServerCredentials:
    with open(settings.tls_key_file, "rb") as key, open(settings.tls_cert_file, "rb") as cert:
        return grpc.ssl_server_credentials([(key.read(), cert.read())])


def build_server(settings: Settings) -> tuple[Service, int]:
    """The house-plan entry point, for embedding: the server, bound to the returned port, to
    start() and stop(grace) (its store, refits and metrics with it; a bare grpc.Server would
    serve without them, and leave them running)."""
    service = Service(settings)
    return service, service.port


def serve(settings: Settings) -> None:
    """Runs until SIGTERM or SIGINT, then drains in-flight calls."""
    from threadpoolctl import threadpool_limits  # scikit-learn's dependency

    # One BLAS thread per call: the handlers are the parallelism. OpenBLAS's own threads cost
    # more than they save on the GP's small matrices (at 300 trials an explore took 194 ms
    # against 141 ms with one; many times more when the cores are busy), and make the last
    # bits of a recommendation depend on the host's core count.
    threadpool_limits(limits=1, user_api="blas")
    for line in unknown_variables():
        log.warning(line)
    check_ports(settings)
    # A file that is no database of ours to make or migrate is refused before a lock file is
    # made beside it (the store checks it again as it opens it).
    check_database(settings.database_url, create=True)
    database_file = sqlite_file(settings.database_url)
    if database_file is not None and not database_file.exists():
        refuse_without_keys(settings)  # a new database has no keys: say so before making it
    try:
        sqlite_lock = hold_sqlite_file(settings.database_url)
    except SqliteFileTaken as exc:
        raise ConfigurationError(str(exc)) from None
    try:
        service = Service(settings)
    except BaseException:
        release_sqlite_file(sqlite_lock)
        raise
    # The handlers go in before start(): from the moment health says SERVING, a SIGTERM (or a
    # SIGHUP) must drain the server, not kill it with calls in flight. One that comes during
    # start() is acted on once it has started.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # SIGHUP's default is to die at once, without draining; operators send it expecting a
    # reload, and there is nothing to reload: say so and keep serving.
    signal.signal(signal.SIGHUP, lambda *_: log.warning(
        "SIGHUP ignored: settings are read at start only; restart the server (SIGTERM drains "
        "it) to change them"))
    service.start()
    gc.freeze()  # the start-up heap (modules, laws, models) is never garbage: spare the collector
    metrics = (f"{service.metrics_host}:{service.metrics_port}" if service.metrics_port
               else "no port")
    log.info("hparamrec listening on %s:%d (metrics on %s), database %s, auth %s, TLS %s",
             settings.host, service.port, metrics, _redacted(settings.database_url),
             "off" if settings.auth_disabled else "on", "on" if settings.tls_cert_file else "off")
    stop.wait()
    log.info("shutting down: draining in-flight calls for up to %.0f s", settings.grace_seconds)
    started = time.monotonic()
    service.stop()
    if sqlite_lock is not None:
        sqlite_lock.close()
    log.info("stopped in %.1f s", time.monotonic() - started)


def _redacted(url: str) -> str:
    import sqlalchemy as sa
    return sa.make_url(url).render_as_string(hide_password=True)
