"""`runs list`, `runs export` and Client.list_runs/iter_runs against a server from before
ListRuns' spec filter: it ignores the filter and lists every run, so a filtered listing is
refused (one line, non-zero exit in the CLI) rather than shown as the spec's runs."""

import asyncio
import json
from concurrent import futures

import grpc
import pytest

from clients import convert
from clients.aio import AsyncClient
from clients.client import Client
from clients.errors import UnimplementedError
from clients.models import Run, TrainingSpec
from hparamrec.v1 import recommender_pb2 as pb
from hparamrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.integration.test_cli import cli

pytestmark = pytest.mark.integration

SMALL = dict(n_params=1e9, n_tokens=2e10)
RUNS = [Run(run_id=f"r{i}", spec=TrainingSpec(n_params=1e9 * (1 + i), n_tokens=2e10))
        for i in range(5)]


class OldServer(pb_grpc.RecommenderServiceServicer):
    """ListRuns as served before the spec filter: every run, page_size at a time, and no
    spec_filtered in the answer."""

    def ListRuns(self, request, context):
        start = int(request.page_token or 0)
        end = start + (request.page_size or 100)
        return pb.ListRunsResponse(runs=[convert.to_proto(r) for r in RUNS[start:end]],
                                   next_page_token=str(end) if end < len(RUNS) else "")


@pytest.fixture(scope="module")
def old_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_RecommenderServiceServicer_to_server(OldServer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_a_filtered_listing_from_an_old_server_is_refused(old_server):
    with Client(old_server, retries=0) as client:
        with pytest.raises(UnimplementedError, match="does not filter runs by spec"):
            client.list_runs(4, spec=SMALL)
        with pytest.raises(UnimplementedError):
            list(client.iter_runs(spec=SMALL))
        assert [r.run_id for r in client.iter_runs(page_size=2)] == [r.run_id for r in RUNS]


def test_the_async_client_refuses_it_too(old_server):
    async def listing(spec):
        async with AsyncClient(old_server, retries=0) as client:
            return [r.run_id async for r in client.iter_runs(spec=spec)]

    with pytest.raises(UnimplementedError):
        asyncio.run(listing(SMALL))
    assert asyncio.run(listing(None)) == [r.run_id for r in RUNS]


@pytest.mark.parametrize("command", ["list", "export"])
def test_cli_runs_by_spec_against_an_old_server_exits_with_one_line(old_server, tmp_path, command):
    out = cli("runs", command, "--params", "1B", "--tokens", "20B",
              *(["--out", str(tmp_path / "runs.jsonl")] if command == "export" else []),
              server=old_server)
    assert out.returncode != 0
    assert "does not filter runs by spec" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs.jsonl").exists() or not (tmp_path / "runs.jsonl").read_text()
