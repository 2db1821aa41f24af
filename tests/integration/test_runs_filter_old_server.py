"""`runs list`, `runs export` and Client.iter_runs against a server from before ListRuns' spec
filter: it ignores the filter and pages through every run; the client filters what it gets."""

import json
from concurrent import futures

import grpc
import pytest

from benchmark_db.records import resolve_spec
from clients import convert
from clients.client import Client
from clients.models import Run, TrainingSpec
from hparamrec.v1 import recommender_pb2 as pb
from hparamrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.integration.test_cli import cli

pytestmark = pytest.mark.integration

SMALL = dict(n_params=1e9, n_tokens=2e10)
LARGE = dict(n_params=1.3e9, n_tokens=1e11)


def stored(run_id: str, **sizes) -> Run:
    """A run as a server returns it: its spec resolved, every field set."""
    spec = resolve_spec(**sizes)
    return Run(run_id=run_id, spec=TrainingSpec(
        n_params=spec.n_params, n_active_params=spec.n_active_params, n_tokens=spec.n_tokens,
        compute_flops=spec.compute_flops, seq_len=spec.seq_len,
        architecture=spec.architecture.value, optimizer=spec.optimizer.value,
        weight_bits=spec.weight_bits))


# Newest first, the specs interleaved: s4, l4, s3, l3, ... s0, l0.
RUNS = [stored(f"{name}{i}", **sizes) for i in reversed(range(5))
        for name, sizes in (("s", SMALL), ("l", LARGE))]


class OldServer(pb_grpc.RecommenderServiceServicer):
    """ListRuns as served before the spec filter: every run, page_size at a time."""

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


def test_the_old_server_ignores_the_filter(old_server):
    with Client(old_server, retries=0) as client:
        raw = client.stub.ListRuns(pb.ListRunsRequest(page_size=4, spec=pb.TrainingSpec(**SMALL)))
    assert [r.run_id for r in raw.runs] == ["s4", "l4", "s3", "l3"]


def test_the_client_filters_what_an_old_server_returns(old_server):
    with Client(old_server, retries=0) as client:
        page = client.list_runs(4, spec=SMALL)
        assert [r.run_id for r in page.runs] == ["s4", "s3"] and page.next_page_token
        assert [r.run_id for r in client.iter_runs(page_size=3, spec=LARGE)] == \
            [f"l{i}" for i in reversed(range(5))]
        assert [r.run_id for r in client.iter_runs(limit=3, page_size=2, spec=SMALL)] == \
            ["s4", "s3", "s2"]
        by_compute = {"n_params": 1e9, "compute_flops": 6 * 1e9 * 2e10}
        assert len(list(client.iter_runs(spec=by_compute))) == 5
        assert list(client.iter_runs(spec={**SMALL, "seq_len": 4096})) == []
        assert len(list(client.iter_runs())) == 10


def test_cli_runs_list_and_export_by_spec_against_an_old_server(old_server, tmp_path):
    out = cli("runs", "list", "--params", "1.3B", "--tokens", "100B", "--limit", "3", "--json",
              server=old_server)
    assert out.returncode == 0, out.stderr
    assert [r["run_id"] for r in json.loads(out.stdout)["runs"]] == ["l4", "l3", "l2"]
    exported = tmp_path / "small.jsonl"
    out = cli("runs", "export", "--params", "1B", "--compute", "1.2e20", "--out", str(exported),
              "--json", server=old_server)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["runs"] == 5
    assert [json.loads(line)["run_id"] for line in exported.read_text().splitlines()] == \
        [f"s{i}" for i in range(5)]  # oldest first
    out = cli("runs", "list", "--params", "-1", "--tokens", "1B", server=old_server)
    assert out.returncode == 2 and "n_params" in out.stderr, out.stderr
