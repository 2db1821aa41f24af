"""What the integrations do with input a report would refuse, and with the cases where the run has
no recommendation (a fallback, a stored run): bad input fails at start, before any training; a
run that trained is never lost, nor does its report ever fail the training."""

import math

import pytest

from clients import Client, InvalidArgumentError, RunOutcome, RunStatus, convert, unsent
from clients.integrations import TrackedRun, tracked_run
from tests.integration.test_integrations import (HP, MICRO_BATCH, SEQ_LEN, SPEC, _hf_trainer,
                                                _lightning_module, _lightning_trainer)

pytestmark = pytest.mark.integration
torch = pytest.importorskip("torch")
OFFLINE = "127.0.0.1:1"  # nothing listens there
FALLBACK = {"lr": 1e-3, "batch_size_tokens": 256, "weight_decay": 0.1}


@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path / 'svc.db'}"


def _saved(run: TrackedRun):
    assert run.unsent_path is not None and run.unsent_path.exists()
    return convert.from_proto(unsent.load(run.unsent_path))


# 1. The callbacks without a recommendation: the service down with a fallback, or an explore job
# requeued after its run was reported. They crashed at start reading recommendation.spec.

def test_the_transformers_callback_trains_with_the_fallback_when_the_service_is_down(tmp_path):
    pytest.importorskip("transformers")
    from clients.integrations import HparamrecCallback

    callback = HparamrecCallback(SPEC, run_id="hf-fb-1", server=OFFLINE, fallback=FALLBACK,
                                 recommend_patience_seconds=0, report_patience_seconds=0)
    trainer = _hf_trainer(tmp_path, callback, max_steps=1000)
    assert callback.run.recommendation is None
    assert trainer.args.learning_rate == FALLBACK["lr"]
    assert trainer.args.gradient_accumulation_steps == 256 // (MICRO_BATCH * SEQ_LEN)
    # max_steps from the spec's tokens, as with a recommendation
    assert trainer.args.max_steps == math.ceil(SPEC["n_tokens"] / 256)
    trainer.train()
    saved = _saved(callback.run)
    assert saved.run_id == "hf-fb-1" and saved.hyperparameters.lr == FALLBACK["lr"]
    assert saved.hyperparameters.batch_size_tokens == 256


def test_the_lightning_callback_trains_with_the_fallback_when_the_service_is_down():
    pytest.importorskip("lightning")
    from clients.integrations import HparamrecLightningCallback

    callback = HparamrecLightningCallback(SPEC, run_id="pl-fb-1", server=OFFLINE,
                                          fallback=FALLBACK, recommend_patience_seconds=0,
                                          report_patience_seconds=0)
    module, trainer = _lightning_module(), _lightning_trainer(callback, max_steps=1000)
    trainer.fit(module)
    assert module.lr == FALLBACK["lr"] and module.weight_decay == FALLBACK["weight_decay"]
    assert trainer.accumulate_grad_batches == 256 // (MICRO_BATCH * SEQ_LEN)
    assert trainer.global_step == math.ceil(SPEC["n_tokens"] / 256)
    saved = _saved(callback.run)
    assert saved.run_id == "pl-fb-1" and saved.hyperparameters.batch_size_tokens == 256


def _report_first(target, run_id):
    with tracked_run(SPEC, server=target, run_id=run_id, mode="explore") as first:
        first.log(3.0)
    assert first.report.created
    return first


def test_an_explore_transformers_job_requeued_after_its_report_trains_with_the_stored_values(
        target, tmp_path, caplog):
    pytest.importorskip("transformers")
    from clients.integrations import HparamrecCallback

    first = _report_first(target, "hf-requeued")
    callback = HparamrecCallback(SPEC, run_id="hf-requeued", server=target, mode="explore")
    trainer = _hf_trainer(tmp_path, callback, max_steps=1000)
    assert callback.run.hyperparameters.lr == first.hyperparameters.lr
    assert trainer.args.learning_rate == first.hyperparameters.lr
    batch = MICRO_BATCH * trainer.args.gradient_accumulation_steps * SEQ_LEN
    assert trainer.args.max_steps == math.ceil(SPEC["n_tokens"] / batch)
    trainer.train()
    assert "run hf-requeued was reported already (completed): it trains again" in caplog.text
    assert callback.run.report is not None and not callback.run.report.created


def test_an_explore_lightning_job_requeued_after_its_report_trains_with_the_stored_values(
        target, caplog):
    pytest.importorskip("lightning")
    from clients.integrations import HparamrecLightningCallback

    first = _report_first(target, "pl-requeued")
    callback = HparamrecLightningCallback(SPEC, run_id="pl-requeued", server=target,
                                          mode="explore")
    module, trainer = _lightning_module(), _lightning_trainer(callback, max_steps=1000)
    trainer.fit(module)
    assert module.lr == first.hyperparameters.lr
    batch = MICRO_BATCH * trainer.accumulate_grad_batches * SEQ_LEN
    assert trainer.global_step == math.ceil(SPEC["n_tokens"] / batch)
    assert "run pl-requeued was reported already (completed): it trains again" in caplog.text


# 2. Metadata that is not text: refused at start, not at the end of training.

def test_metadata_that_is_not_text_is_refused_before_any_training():
    trained = []
    with pytest.raises(InvalidArgumentError) as refused:
        with tracked_run(SPEC, server=OFFLINE, hyperparameters=HP, metadata={"gpus": 8}):
            trained.append(True)
    assert not trained
    assert [field for field, _ in refused.value.field_violations] == ["metadata.gpus"]
    assert "metadata.gpus" in str(refused.value)


def test_the_callbacks_refuse_such_metadata_when_made():
    pytest.importorskip("transformers")
    pytest.importorskip("lightning")
    from clients.integrations import HparamrecCallback, HparamrecLightningCallback

    for callback in (HparamrecCallback, HparamrecLightningCallback):
        with pytest.raises(InvalidArgumentError, match="metadata.gpus"):
            callback(SPEC, server=OFFLINE, metadata={"gpus": 8})


class _BrokenClient:
    """A client whose report fails in a way nobody planned for."""

    def report_run(self, report, **options):
        raise RuntimeError("something unexpected")

    def close(self):
        pass


def test_nothing_in_the_report_fails_the_training(caplog):
    """Not an unexpected error from the client, nor metadata spoilt after the start."""
    with tracked_run(SPEC, client=_BrokenClient(), hyperparameters=HP, run_id="broken") as run:
        run.log(2.5)
    assert _saved(run).outcome == RunOutcome.completed(2.5)
    assert "something unexpected" in caplog.text
    with tracked_run(SPEC, client=_BrokenClient(), hyperparameters=HP, run_id="spoilt") as run:
        run.log(2.5)
        run.metadata["gpus"] = 8
    assert "could not report run spoilt" in caplog.text


# 3. Reports the service would refuse: found at start, or, if only the end can tell, kept.

def test_a_finite_blow_up_is_reported_as_diverged(target):
    with tracked_run(SPEC, server=target, hyperparameters=HP, run_id="blown-up") as run:
        for _ in range(5):
            run.log(2.5)
        for _ in range(5):
            run.log(5e3)
    with Client(target) as client:
        stored = client.get_run("blown-up")
    assert stored.outcome == RunOutcome.diverged(5e3)
    assert run.outcome.status is RunStatus.DIVERGED
    assert "1000 nats" in stored.metadata["final_loss"]


def test_metadata_counts_the_labels_the_integration_adds(target):
    labels = {f"label{i}": "x" for i in range(62)}  # within 64, but the integration adds 3
    with pytest.raises(InvalidArgumentError) as refused:
        TrackedRun(SPEC, server=target, hyperparameters=HP, metadata=labels)
    assert refused.value.field_violations[0][0] == "metadata"
    assert "at most 61" in str(refused.value)
    labels.pop("label0")
    with tracked_run(SPEC, server=target, hyperparameters=HP, metadata=labels,
                     run_id="61-labels") as run:
        run.log(2.5)
    with Client(target) as client:
        assert len(client.get_run("61-labels").metadata) == 64


@pytest.mark.parametrize("given, field", [
    ({"lr": 1e-3, "batch_size_tokens": 5e3}, "weight_decay"),
    ({"lr": 1e-3, "batch_size_tokens": 0, "weight_decay": 0.1}, "batch_size_tokens"),
    ({"lr": 0, "batch_size_tokens": 64, "weight_decay": 0.1}, "lr"),
    # more than the spec's n_tokens; less than its seq_len
    ({"lr": 1e-3, "batch_size_tokens": 2e4, "weight_decay": 0.1}, "batch_size_tokens"),
    ({"lr": 1e-3, "batch_size_tokens": 8, "weight_decay": 0.1}, "batch_size_tokens"),
    ({"lr": 1e-3, "batch_size_tokens": 64, "weight_decay": 0.1, "qat_fraction": 0.2},
     "qat_fraction"),  # no quantization in the spec
])
def test_hyperparameters_and_fallbacks_a_report_would_refuse_fail_at_start(given, field):
    for option in ("hyperparameters", "fallback"):
        trained = []
        with pytest.raises(InvalidArgumentError) as refused:
            with tracked_run(SPEC, server=OFFLINE, recommend_patience_seconds=0,
                             **{option: given}):
                trained.append(True)
        assert not trained
        assert refused.value.field_violations[0][0] == f"{option}.{field}", refused.value


def test_a_report_the_service_refuses_at_the_end_is_saved_with_its_reason(target, caplog):
    """A loss in the wrong unit (here a fraction, not nats per token): only the end can tell."""
    with tracked_run(SPEC, server=target, hyperparameters=HP, run_id="wrong-unit") as run:
        run.log(1e-3)
    assert run.report is None
    assert _saved(run).outcome == RunOutcome.completed(1e-3)
    assert "the service refused the report of run wrong-unit" in caplog.text
    assert "below any language model's loss" in caplog.text
    assert str(run.unsent_path) in caplog.text
