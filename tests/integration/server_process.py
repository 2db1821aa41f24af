"""`hparamrec serve` as a real process on loopback, for tests that need several servers, a
SIGKILL or a SIGTERM. The log goes to a file (a pipe nobody reads could fill and stall it)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

HPARAMREC = str(Path(sys.executable).parent / "hparamrec")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, db: str, log_path: Path, *flags: str, port: int | None = None,
                 env: dict[str, str] | None = None):
        self.db, self.log_path, self.flags = db, log_path, flags
        self.port = port or free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "ServerProcess":
        self.launch()
        self.wait_serving(timeout)
        return self

    def launch(self) -> "ServerProcess":
        """Starts the process without waiting for it to serve (see wait_serving): several
        servers launched first start at the same time."""
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(
                [HPARAMREC, "serve", "--db", self.db, "--port", str(self.port),
                 "--metrics-port", "0", "--no-auth", *self.flags],
                stdout=log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    time.sleep(0.1)
        raise TimeoutError(f"no server on {self.target}:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup, like a machine that dies."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then wait for the drain; returns the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        """Whatever state it is in, leave no process behind."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""
