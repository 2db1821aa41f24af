"""ListRuns' spec filter: in the store (SQLite and PostgreSQL), through a real server, and
through the `hparamrec runs list` command."""

import json
import math

import pytest

from benchmark_db.records import (Hyperparameters, RunOutcome, RunReport, RunStatus, SpecFilter,
                                  resolve_spec)
from benchmark_db.store import RunStore
from clients.client import Client, spec
from clients.errors import InvalidArgumentError
from hparamrec.v1 import recommender_pb2 as pb
from tests.integration.in_process_server import QUICK_REFITS, running_service
from tests.integration.test_cli import cli

pytestmark = pytest.mark.integration

SMALL = dict(n_params=1e9, n_tokens=2e10)
LARGE = dict(n_params=1.3e9, n_tokens=1e11)


def run(run_id: str, seq_len: int = 2048, bits: int = 16, **sizes) -> RunReport:
    return RunReport(run_id=run_id, spec=resolve_spec(seq_len=seq_len, weight_bits=bits, **sizes),
                     hyperparameters=Hyperparameters(lr=1e-3, batch_size_tokens=1e6,
                                                     weight_decay=0.1),
                     outcome=RunOutcome(status=RunStatus.COMPLETED, final_loss=2.5))


@pytest.fixture
def store(database_url):
    s = RunStore(database_url)
    yield s
    s.close()


def all_pages(store: RunStore, tenant: str, page_size: int, spec_filter) -> list[list[str]]:
    pages, token = [], ""
    while True:
        found, token = store.page(tenant, page_size, token, spec_filter)
        pages.append([r.run_id for r in found])
        if not token:
            return pages


def test_store_pages_only_the_specs_runs_across_pages(store):
    for i in range(7):
        store.report("t", run(f"s{i}", **SMALL))
        store.report("t", run(f"l{i}", **LARGE))
    small = SpecFilter.of(resolve_spec(**SMALL))
    assert all_pages(store, "t", 3, small) == [["s6", "s5", "s4"], ["s3", "s2", "s1"], ["s0"]]
    assert all_pages(store, "t", 7, small) == [[f"s{i}" for i in reversed(range(7))]]
    assert [r for page in all_pages(store, "t", 4, None) for r in page][:2] == ["l6", "s6"]


def test_store_filter_sizes_to_float_noise_and_exact_fields_where_given(store):
    store.report("t", run("same", **SMALL))
    store.report("t", run("noise", n_params=1e9 * (1 + 3e-7), n_tokens=2e10 * (1 - 3e-7)))
    store.report("t", run("one-percent-off", n_params=1.01e9, n_tokens=2e10))
    store.report("t", run("long", seq_len=4096, **SMALL))
    store.report("t", run("4-bit", bits=4, **SMALL))
    resolved = resolve_spec(**SMALL)
    ids = lambda f: {r.run_id for r in store.page("t", 100, "", f)[0]}  # noqa: E731
    assert ids(SpecFilter.of(resolved, frozenset())) == {"same", "noise", "long", "4-bit"}
    assert ids(SpecFilter.of(resolved)) == {"same", "noise"}  # seq_len 2048, 16 bits
    assert ids(SpecFilter.of(resolve_spec(seq_len=4096, **SMALL), frozenset({"seq_len"}))) == {"long"}
    for record in store.page("t", 100, "", None)[0]:  # SQL and Python agree
        assert SpecFilter.of(resolved).matches(record.spec) == (record.run_id in {"same", "noise"})


def test_store_filter_keeps_tenants_apart(store):
    store.report("alice", run("a", **SMALL))
    store.report("bob", run("b", **SMALL))
    small = SpecFilter.of(resolve_spec(**SMALL))
    assert [r.run_id for r in store.page("alice", 10, "", small)[0]] == ["a"]
    assert [r.run_id for r in store.page("bob", 10, "", small)[0]] == ["b"]
    assert store.page("carol", 10, "", small) == ([], "")


def test_server_filters_pages_of_a_spec(client):
    for i in range(5):
        for name, sizes in (("s", SMALL), ("l", LARGE)):
            client.report_run(pb.ReportRunRequest(
                run_id=f"{name}{i}", spec=spec(**sizes),
                hyperparameters=pb.Hyperparameters(lr=1e-3, batch_size_tokens=1e6, weight_decay=0.1),
                outcome=pb.RunOutcome(status=pb.RUN_STATUS_COMPLETED, final_loss=2.5)))
    first = client.list_runs(2, spec={"n_params": "1B", "n_tokens": "20B"})
    assert [r.run_id for r in first.runs] == ["s4", "s3"] and first.next_page_token
    assert [r.run_id for r in client.iter_runs(page_size=2, spec=spec(**LARGE))] == \
        [f"l{i}" for i in reversed(range(5))]
    # compute in place of tokens resolves to the same spec; a narrower seq_len matches nothing
    by_compute = spec(n_params=1e9, compute_flops=6 * 1e9 * 2e10)
    assert len(list(client.iter_runs(spec=by_compute))) == 5
    assert list(client.iter_runs(spec=spec(seq_len=4096, **SMALL))) == []
    assert len(list(client.iter_runs())) == 10  # unset: every run


@pytest.mark.parametrize("bad, field", [
    (spec(n_params=float("nan"), n_tokens=1e10), "spec.n_params"),
    (spec(n_params=-1e9, n_tokens=1e10), "spec.n_params"),
    (spec(n_params=1e9, n_tokens=-5.0), "spec.n_tokens"),
    (spec(n_params=1e9), "spec.n_tokens"),
    (spec(n_params=1e9, n_tokens=1e10, architecture="rnn"), "spec.architecture"),
])
def test_server_rejects_a_bad_filter_naming_the_field(client, bad, field):
    with pytest.raises(InvalidArgumentError) as exc:
        client.list_runs(spec=bad)
    assert [f for f, _ in exc.value.field_violations] == [field]


def test_server_filter_keeps_tenants_apart(tmp_path):
    url = f"sqlite:///{tmp_path / 'tenants.db'}"
    store = RunStore(url)
    alice, _ = store.keys.create("alice")
    bob, _ = store.keys.create("bob")
    store.report("bob", run("bobs", **SMALL))
    try:
        with running_service(url, auth_disabled=False, refit_debounce_seconds=QUICK_REFITS) as svc:
            with Client(f"127.0.0.1:{svc.port}", api_key=alice, retries=0) as c:
                assert c.list_runs(spec=spec(**SMALL)).runs == []
            with Client(f"127.0.0.1:{svc.port}", api_key=bob, retries=0) as c:
                assert [r.run_id for r in c.list_runs(spec=spec(**SMALL)).runs] == ["bobs"]
    finally:
        store.close()


@pytest.fixture
def cli_target(tmp_path):
    with running_service(f"sqlite:///{tmp_path / 'cli.db'}") as svc:
        yield f"127.0.0.1:{svc.port}"


def test_cli_runs_list_and_export_by_spec(cli_target, tmp_path):
    common = ["--lr", "1e-3", "--batch-size-tokens", "1M", "--weight-decay", "0.1", "--loss", "2.5"]
    for run_id, sizes in (("small", ["--params", "1B", "--tokens", "20B"]),
                          ("large", ["--params", "1.3B", "--tokens", "100B"])):
        out = cli("report", *sizes, *common, "--run-id", run_id, server=cli_target)
        assert out.returncode == 0, out.stderr
    out = cli("runs", "list", "--params", "1.3B", "--tokens", "100B", "--json", server=cli_target)
    assert out.returncode == 0, out.stderr
    assert [r["run_id"] for r in json.loads(out.stdout)["runs"]] == ["large"]
    out = cli("runs", "list", "--json", server=cli_target)
    assert [r["run_id"] for r in json.loads(out.stdout)["runs"]] == ["large", "small"]
    exported = tmp_path / "small.jsonl"
    out = cli("runs", "export", "--params", "1B", "--compute", "1.2e20", "--out", str(exported),
              "--json", server=cli_target)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["runs"] == 1
    assert json.loads(exported.read_text())["run_id"] == "small"


def test_cli_spec_flags_without_sizes_are_bad_input(cli_target):
    out = cli("runs", "list", "--bits", "4", server=cli_target)
    assert out.returncode == 2 and "--bits" in out.stderr
    out = cli("runs", "list", "--params", "-1", "--tokens", "1B", server=cli_target)
    assert out.returncode == 2 and "n_params" in out.stderr, out.stderr


def test_size_range_is_the_tolerance_either_way():
    lo, hi = SpecFilter.size_range(1e9)
    assert math.isclose(1e9 - lo, 1e-6 * 1e9) and math.isclose(hi - 1e9, 1e-6 * hi)


def test_plot_reads_only_the_specs_runs_from_the_server(client):
    from clients import plot

    for run_id, sizes in (("s", SMALL), ("l", LARGE)):
        client.report_run(pb.ReportRunRequest(
            run_id=run_id, spec=spec(**sizes),
            hyperparameters=pb.Hyperparameters(lr=1e-3, batch_size_tokens=1e6, weight_decay=0.1),
            outcome=pb.RunOutcome(status=pb.RUN_STATUS_COMPLETED, final_loss=2.5)))
    rec = client.recommend(spec(**LARGE))  # its spec carries compute_flops too
    assert [r.run_id for r in plot.stored_runs_of(client, rec.spec)] == ["l"]
