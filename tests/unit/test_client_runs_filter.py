"""The client's copy of ListRuns' spec filter (clients/client.py runs_of_request), fed the
unfiltered runs a server from before the filter returns (no server)."""

import pytest

from benchmark_db.records import SpecFilter, resolve_spec
from clients.client import list_runs_request, runs_of_request, spec_matcher
from clients.errors import InvalidArgumentError
from clients.models import Run, RunPage, TrainingSpec

SMALL = dict(n_params=1e9, n_tokens=2e10)
LARGE = dict(n_params=1.3e9, n_tokens=1e11)


def stored(run_id: str, **fields) -> Run:
    """A run as the service returns it: its spec resolved, every field set."""
    spec = resolve_spec(**fields)
    return Run(run_id=run_id, spec=TrainingSpec(
        n_params=spec.n_params, n_active_params=spec.n_active_params, n_tokens=spec.n_tokens,
        compute_flops=spec.compute_flops, seq_len=spec.seq_len,
        architecture=spec.architecture.value, optimizer=spec.optimizer.value,
        weight_bits=spec.weight_bits))


RUNS = [
    stored("same", **SMALL),
    stored("noise", n_params=1e9 * (1 + 3e-7), n_tokens=2e10 * (1 - 3e-7)),
    stored("one-percent-off", n_params=1.01e9, n_tokens=2e10),
    stored("large", **LARGE),
    stored("long", seq_len=4096, **SMALL),
    stored("4-bit", weight_bits=4, **SMALL),
    stored("moe", n_params=8e9, n_active_params=1e9, n_tokens=2e10, architecture="moe"),
]


def kept(**filter_spec) -> list[str]:
    request = list_runs_request(100, "", TrainingSpec(**filter_spec))
    return [run.run_id for run in runs_of_request(RunPage(runs=RUNS), request).runs]


@pytest.mark.parametrize("filter_spec, expected", [
    # sizes to float noise; seq_len, bits and architecture only when given
    (SMALL, ["same", "noise", "long", "4-bit"]),
    ({**SMALL, "seq_len": 2048}, ["same", "noise", "4-bit"]),
    ({**SMALL, "seq_len": 4096}, ["long"]),
    ({**SMALL, "weight_bits": 4}, ["4-bit"]),
    ({**SMALL, "architecture": "dense", "weight_bits": 16}, ["same", "noise", "long"]),
    (LARGE, ["large"]),
    # compute in place of tokens resolves to the same spec
    ({"n_params": 1e9, "compute_flops": 6 * 1e9 * 2e10}, ["same", "noise", "long", "4-bit"]),
    # n_active_params defaults to n_params: the MoE run only with its active parameters
    ({"n_params": 8e9, "n_tokens": 2e10, "architecture": "moe"}, []),
    ({"n_params": 8e9, "n_active_params": 1e9, "n_tokens": 2e10}, ["moe"]),
    ({"n_params": 2e9, "n_tokens": 2e10}, []),
])
def test_the_client_keeps_only_the_runs_of_the_spec(filter_spec, expected):
    assert kept(**filter_spec) == expected


@pytest.mark.parametrize("filter_spec", [SMALL, {**SMALL, "seq_len": 2048}, LARGE,
                                         {**SMALL, "weight_bits": 4, "optimizer": "adamw"},
                                         {"n_params": 8e9, "n_active_params": 1e9,
                                          "n_tokens": 2e10, "architecture": "moe"}])
def test_the_client_decides_as_the_service_does(filter_spec):
    """The service's filter is SpecFilter.of(the resolved spec, the fields given); its Python
    match agrees with the store's SQL (tests/integration/test_list_runs_filter.py)."""
    given = frozenset(n for n in ("seq_len", "weight_bits", "architecture", "optimizer")
                      if n in filter_spec)
    service_filter = SpecFilter.of(resolve_spec(**filter_spec), given)
    request = list_runs_request(100, "", TrainingSpec(**filter_spec))
    matches = spec_matcher(request.spec)
    for run in RUNS:
        record = resolve_spec(**{n: v for n, v in run.spec.model_dump().items()
                                 if n != "compute_flops"})
        assert matches(run.spec) == service_filter.matches(record), run.run_id


def test_without_a_spec_the_page_is_as_received():
    page = RunPage(runs=RUNS, next_page_token="7")
    assert runs_of_request(page, list_runs_request(100, "", None)) is page
    filtered = runs_of_request(page, list_runs_request(100, "", TrainingSpec(**LARGE)))
    assert filtered.next_page_token == "7"  # the next page still follows


@pytest.mark.parametrize("bad, field", [
    ({"n_params": -1e9, "n_tokens": 1e10}, "spec.n_params"),
    ({"n_params": 1e9}, "spec.n_tokens"),
    ({"n_params": 1e9, "n_tokens": 1e10, "architecture": "rnn"}, "spec.architecture"),
])
def test_a_bad_filter_is_bad_input_naming_the_field(bad, field):
    """As the service answers it (an old server would not have checked it)."""
    with pytest.raises(InvalidArgumentError) as exc:
        runs_of_request(RunPage(runs=RUNS), list_runs_request(100, "", TrainingSpec(**bad)))
    assert [f for f, _ in exc.value.field_violations] == [field]
