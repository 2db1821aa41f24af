import pytest

from benchmark_db.store import RunStore
from clients.client import Client
from tests.integration.in_process_server import running_service


@pytest.fixture
def store(database_url):
    """The store alone on a fresh database of each kind."""
    s = RunStore(database_url)
    yield s
    s.close()


@pytest.fixture
def service(database_url):
    """A real server on a free port, authentication off, on a fresh database of each kind
    (SQLite and PostgreSQL: `database_url` is parametrized)."""
    with running_service(database_url, metrics_port=0, refit_debounce_seconds=0.1) as svc:
        yield svc


@pytest.fixture
def target(service) -> str:
    return f"127.0.0.1:{service.port}"


@pytest.fixture
def client(target):
    with Client(target, retries=0) as c:
        yield c
