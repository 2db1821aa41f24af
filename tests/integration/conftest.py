import pytest

from clients.client import Client
from service.server import Service
from service.settings import Settings


@pytest.fixture
def service(tmp_path):
    """A real server on a free port with its own SQLite file, authentication off."""
    svc = Service(Settings(database_url=f"sqlite:///{tmp_path / 'svc.db'}", port=0,
                           auth_disabled=True, metrics_port=0))
    svc.start()
    yield svc
    svc.stop(grace=1)


@pytest.fixture
def target(service) -> str:
    return f"127.0.0.1:{service.port}"


@pytest.fixture
def client(target):
    with Client(target, retries=0) as c:
        yield c
