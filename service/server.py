"""Server lifecycle: build_server() for tests and embedding, serve() for the command line."""

import logging
import signal
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from benchmark_db.store import RunStore
from hparamrec.v1 import recommender_pb2 as pb
from hparamrec.v1 import recommender_pb2_grpc as pb_grpc
from predictor.engine import RecommendationEngine
from service.errors import ErrorInterceptor
from service.handlers import RecommenderServicer
from service.settings import Settings

log = logging.getLogger("hparamrec.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RecommenderService"].full_name


class Service:
    """A built, not yet started, server with the pieces a test or serve() needs to reach."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = RunStore(settings.database_url)
        self.engine = RecommendationEngine(self.store)
        self.health = health.HealthServicer()
        limit = settings.max_message_bytes
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.max_workers,
                                       thread_name_prefix="hparamrec-rpc"),
            interceptors=[ErrorInterceptor()],
            options=[("grpc.max_receive_message_length", limit),
                     ("grpc.max_send_message_length", 4 * limit)],
        )
        pb_grpc.add_RecommenderServiceServicer_to_server(
            RecommenderServicer(self.engine, self.store), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        self.port = self.server.add_insecure_port(f"{host}:{settings.port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {settings.host}:{settings.port}")

    def start(self) -> None:
        self.server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = None) -> None:
        """Stops taking calls, lets in-flight ones finish within `grace` seconds, closes the store."""
        self.health.enter_graceful_shutdown()
        self.server.stop(self.settings.grace_seconds if grace is None else grace).wait()
        self.store.close()


def build_server(settings: Settings) -> tuple[grpc.Server, int]:
    """The house-plan entry point: a server ready to start, and the port it is bound to."""
    service = Service(settings)
    return service.server, service.port


def serve(settings: Settings) -> None:
    """Runs until SIGTERM or SIGINT, then drains in-flight calls."""
    service = Service(settings)
    service.start()
    log.info("hparamrec listening on %s:%d, database %s", settings.host, service.port,
             _redacted(settings.database_url))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down: draining in-flight calls for up to %.0f s", settings.grace_seconds)
    service.stop()


def _redacted(url: str) -> str:
    import sqlalchemy as sa
    return sa.make_url(url).render_as_string(hide_password=True)
