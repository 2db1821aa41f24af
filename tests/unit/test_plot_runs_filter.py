"""The plots ask the service for one spec's runs and filter again, for servers from before
ListRuns' spec filter (which ignore it)."""

from clients import plot, study_plot
from clients.models import (Hyperparameters, Interval, Pins, Recommendation, Run, RunOutcome,
                            RunStatus, TrainingSpec)

SPEC = TrainingSpec(n_params=1.3e9, n_active_params=1.3e9, n_tokens=1e11, compute_flops=7.8e20,
                    seq_len=2048, architecture="dense", optimizer="adamw", weight_bits=16)
OTHER = SPEC.model_copy(update={"n_tokens": 2e11, "compute_flops": 1.56e21})


def run(run_id: str, spec: TrainingSpec) -> Run:
    return Run(run_id=run_id, spec=spec,
               hyperparameters=Hyperparameters(lr=1e-3, batch_size_tokens=1e6, weight_decay=0.1),
               outcome=RunOutcome(status=RunStatus.COMPLETED, final_loss=2.4))


class OldServer:
    """A client of a server without the filter: every run, whatever spec is asked for."""

    def __init__(self, runs):
        self.runs, self.asked = runs, []

    def recommend(self, spec, pins=None, mode=None):
        iv = Interval(lo=1.0, hi=1.0)
        return Recommendation(lr=1e-3, lr_interval=iv, batch_size_tokens=1e6,
                              batch_size_tokens_interval=iv, spec=SPEC)

    def iter_runs(self, limit=None, page_size=500, *, spec=None):
        self.asked.append(spec)
        return iter(self.runs)


def test_stored_runs_of_asks_for_the_spec_and_filters_what_comes_back():
    client = OldServer([run("b", OTHER), run("a", SPEC)])
    assert [r.run_id for r in plot.stored_runs_of(client, SPEC)] == ["a"]
    assert client.asked == [SPEC.model_copy(update={"compute_flops": None})]


def test_study_history_against_an_old_server_keeps_the_specs_runs_oldest_first():
    client = OldServer([run("a2", SPEC), run("b", OTHER), run("a1", SPEC)])
    h = study_plot.history(client, SPEC, Pins())
    assert [r.run_id for r in h.runs] == ["a1", "a2"]
    assert client.asked[0].n_tokens == SPEC.n_tokens
