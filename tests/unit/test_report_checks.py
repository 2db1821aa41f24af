"""The client's copy of the service's limits on a report, used to refuse a run's bad input at its
start instead of losing its report at its end."""

from clients.integrations import report_checks


def test_the_limits_mirror_the_servers():
    from benchmark_db import records

    for name in ("MIN_LR", "MAX_LR", "MAX_WEIGHT_DECAY", "MAX_BATCH_TOKENS", "MAX_COMPLETED_LOSS",
                 "MAX_ID_LENGTH", "DEFAULT_SEQ_LEN", "NO_QUANTIZATION_BITS"):
        assert getattr(report_checks, name) == getattr(records, name), name
    assert report_checks.RUN_ID_PATTERN.pattern == records.RUN_ID_PATTERN.pattern


import pytest  # noqa: E402

from clients import InvalidArgumentError, RunOutcome  # noqa: E402
from clients.integrations.tracking import TrackedRun  # noqa: E402

SPEC = {"n_params": 1e6, "n_tokens": 1e8, "seq_len": 32}
HP = {"lr": 1e-3, "batch_size_tokens": 64, "weight_decay": 0.1}


def test_use_refuses_what_a_report_would_and_keeps_the_values_it_had():
    run = TrackedRun(SPEC, hyperparameters=HP, reporting=False)
    with pytest.raises(InvalidArgumentError) as refused:
        run.use(weight_decay=-0.1, lr=2e-3)
    assert [field for field, _ in refused.value.field_violations] == ["weight_decay"]
    assert run.hyperparameters.lr == 1e-3
    assert run.use(lr=2e-3).lr == 2e-3


def test_a_completed_loss_over_the_limit_is_a_divergence_at_its_last_loss(caplog):
    run = TrackedRun(SPEC, hyperparameters=HP, reporting=False)
    for loss in [2.5] * 5 + [5e3] * 5:
        assert run.log(loss)
    run.finish()
    assert run.outcome == RunOutcome.diverged(5e3)
    assert "is over the 1000 nats of any completed run" in run.final_loss_label
    assert "reported as diverged" in caplog.text


def test_the_metadata_limit_counts_the_labels_the_integration_adds():
    own = {f"k{i}": "v" for i in range(64 - len(report_checks.ADDED_LABELS))}
    assert report_checks.metadata_violations(own) == []
    # a label of the integration's given by the caller counts once
    assert report_checks.metadata_violations({**own, "integration": "mine"}) == []
    assert report_checks.metadata_violations({**own, "one-more": "v"})[0][0] == "metadata"


def test_a_nul_in_a_label_is_refused_at_the_start_as_the_service_refuses_it():
    """Else the run's report, at its end, is refused and saved for a send-unsent refused too."""
    def fields(metadata):
        return [field for field, _ in report_checks.metadata_violations(metadata)]

    assert fields({"note": "a\x00b"}) == ["metadata.note"]
    assert fields({"no\x00te": "v"}) == ["metadata"]
    assert report_checks.metadata_violations({"note": "tab\there\nnewline"}) == []


def test_a_spec_without_seq_len_or_n_tokens_leaves_those_bounds_to_the_service():
    from clients.models import Hyperparameters, TrainingSpec

    hp = Hyperparameters(lr=1e-3, batch_size_tokens=8, weight_decay=0.0)
    assert report_checks.hyperparameter_violations(
        hp, TrainingSpec(n_params=1e6, compute_flops=1e15), "hyperparameters") == []


def test_values_of_the_wrong_type_are_named_by_their_argument():
    with pytest.raises(InvalidArgumentError) as refused:
        TrackedRun(SPEC, fallback={**HP, "lr": "fast"}, reporting=False)
    assert refused.value.field_violations[0][0] == "fallback.lr"
