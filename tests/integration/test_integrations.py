"""Launcher integrations: a few steps of a tiny model on CPU, against a real server.

The tiny model is a linear regression on synthetic data; a NaN in the data from a given step on
makes the loss NaN there, as bad data or a blown-up update would.
"""

import math
import os
import time

import pytest

from clients import (Client, Hyperparameters, RunOutcome, RunReport, RunStatus, TrialState,
                     UnavailableError, convert, unsent)
from clients.integrations import TrackedRun, tracked_run

pytestmark = pytest.mark.integration
torch = pytest.importorskip("torch")

# seq_len is the tokens per sample of the tiny data: batch sizes are samples x SEQ_LEN tokens.
SEQ_LEN = 16
# The recommended batch for this spec is 7 samples: with micro-batches of 4, the callbacks make
# it 2 x 4 = 8 (128 tokens) and train ceil(1e4 / 128) = 79 steps.
SPEC = {"n_params": 2e4, "n_tokens": 1e4, "seq_len": SEQ_LEN}
MICRO_BATCH = 4
HP = Hyperparameters(lr=1e-3, batch_size_tokens=64, weight_decay=0.1)


def window_mean(losses: list[tuple[int, float]], last_step: int,
                window: float = 0.02) -> tuple[float, int]:
    """The mean of the losses logged at steps in the last `window` of last_step (default: the
    default final_loss_window), and how many there were."""
    kept = [loss for step, loss in losses if step > last_step - window * last_step]
    return sum(kept) / len(kept), len(kept)


@pytest.fixture
def database_url(tmp_path):
    """The client side does not depend on the database kind: SQLite only."""
    return f"sqlite:///{tmp_path / 'svc.db'}"


class Samples(torch.utils.data.Dataset):
    """x -> sum(x); from the nan_from-th sample read on (whatever the order), inputs are NaN."""

    def __init__(self, n: int = 4096, nan_from: int | None = None):
        self.n, self.nan_from, self.read = n, nan_from, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        x = torch.randn(8, generator=torch.Generator().manual_seed(i))
        self.read += 1
        if self.nan_from is not None and self.read > self.nan_from:
            x = x * float("nan")
        return {"x": x, "labels": x.sum()}


class Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(8, 1)

    def forward(self, x, labels=None):
        out = self.linear(x).squeeze(-1)
        return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}


# tracked_run

def test_tracked_run_trains_with_the_recommendation_and_reports_the_mean_loss(target):
    model = Regression()
    with tracked_run(SPEC, server=target, run_id="loop-1", metadata={"team": "a"}) as run:
        hp = run.hyperparameters
        assert hp == run.recommendation.hyperparameters
        optimizer = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        loader = torch.utils.data.DataLoader(Samples(), batch_size=MICRO_BATCH)
        losses = []
        for step, batch in zip(range(5), loader):
            loss = model(**batch)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            assert run.log(loss)  # no step: the final loss is the mean of the last 100 logged
            losses.append(loss.item())
    with Client(target) as client:
        stored = client.get_run("loop-1")
    assert stored.outcome.status is RunStatus.COMPLETED
    assert stored.outcome.final_loss == pytest.approx(sum(losses) / 5)
    assert stored.outcome.final_loss != pytest.approx(losses[-1])
    assert stored.hyperparameters.lr == hp.lr
    assert stored.recommendation_id == run.recommendation.recommendation_id
    assert stored.metadata == {"integration": "tracked_run", "team": "a", "steps_logged": "5",
                               "final_loss": "mean of the last 5 losses logged (no steps given)"}


def test_tracked_run_with_steps_reports_the_mean_loss_of_the_last_steps(target):
    losses = [(step, 3.0 - 0.01 * step + 0.05 * (-1) ** step) for step in range(1, 101)]
    with tracked_run(SPEC, server=target, run_id="loop-steps") as run:
        for step, loss in losses:
            assert run.log(loss, step=step)
    with Client(target) as client:
        stored = client.get_run("loop-steps")
    assert stored.outcome.final_loss == pytest.approx((losses[-2][1] + losses[-1][1]) / 2)
    assert stored.metadata["final_loss"] == "mean of 2 losses over steps 99-100 (the last 2% of 100)"


def test_tracked_runs_in_explore_mode_run_and_report_distinct_trials(target):
    runs = []
    for k in range(2):
        with tracked_run(SPEC, server=target, run_id=f"sweep-{k}", mode="explore") as run:
            run.log(1.0 - 0.1 * k)
        runs.append(run)
    first, second = (r.recommendation for r in runs)
    assert first.trial_id and second.trial_id and first.trial_id != second.trial_id
    assert first.hyperparameters != second.hyperparameters
    with Client(target) as client:
        stored = [client.get_run(f"sweep-{k}") for k in range(2)]
    assert [s.trial_id for s in stored] == [first.trial_id, second.trial_id]
    assert [s.hyperparameters for s in stored] == [first.hyperparameters, second.hyperparameters]
    with pytest.raises(ValueError):
        TrackedRun(SPEC, server=target, mode="explroe")


def test_tracked_run_reports_a_nan_loss_as_diverged_at_once(target):
    hp = Hyperparameters(lr=1e-3, batch_size_tokens=64, weight_decay=0.1)
    with Client(target) as client:
        with tracked_run(SPEC, client=client, hyperparameters=hp, run_id="nan-1") as run:
            assert run.recommendation is None  # hyperparameters given: nothing fetched
            assert run.log(torch.tensor(2.5))
            assert not run.log(torch.tensor(float("nan")))
            # Reported before the block ends, with the last finite loss.
            stored = client.get_run("nan-1")
            assert stored.outcome.status is RunStatus.DIVERGED
            assert stored.outcome.final_loss == 2.5
            assert stored.metadata["final_loss"] == "last finite loss logged"
            assert not run.log(1.0)  # later losses change nothing
        assert client.get_run("nan-1") == stored
        assert len(client.list_runs().runs) == 1


def test_tracked_run_reports_a_numerical_exception_as_diverged_and_reraises_it(target):
    with pytest.raises(RuntimeError):
        with tracked_run(SPEC, server=target, run_id="boom") as run:
            run.log(3.0)
            raise RuntimeError("loss scale underflow")
    with Client(target) as client:
        stored = client.get_run("boom")
    assert stored.outcome.status is RunStatus.DIVERGED


def test_a_run_stopped_by_a_bug_is_reported_by_its_requeued_job(target, caplog):
    """A bug or a lost node says nothing about the lr (it was reported as diverged); the job
    requeued under the run_id, with the same trial, reports the run."""
    with Client(target) as client:
        with pytest.raises(KeyError):
            with tracked_run(SPEC, server=target, run_id="buggy", mode="explore") as run:
                run.log(3.0, step=1)
                raise KeyError("input_ids")
        assert run.report is None and client.list_runs().runs == []
        assert "stopped on KeyError, not a divergence; not reported" in caplog.text
        with tracked_run(SPEC, server=target, run_id="buggy", mode="explore") as requeued:
            requeued.log(2.5, step=100)
        assert requeued.trial_id == run.trial_id
        assert client.get_run("buggy").outcome == RunOutcome.completed(2.5)


@pytest.mark.parametrize("error", [SystemExit(143), MemoryError()])
def test_a_preempted_run_is_reported_by_its_resumed_job(target, caplog, error):
    """A scheduler's SIGTERM, turned into SystemExit, or running out of memory does not end
    the run: the job resumed or requeued under the same run_id reports it (were the first
    attempt reported as failed, the resumed one's report would be dropped: a run_id is stored
    once)."""
    with pytest.raises(type(error)):
        with tracked_run(SPEC, server=target, run_id="preempted") as run:
            run.log(3.0, step=1)
            raise error
    assert run.report is None
    assert f"was interrupted ({type(error).__name__}); not reported" in caplog.text
    with tracked_run(SPEC, server=target, run_id="preempted") as resumed:
        resumed.log(2.5, step=100)
    with Client(target) as client:
        stored = client.get_run("preempted")
    assert stored.outcome == RunOutcome.completed(2.5)


def test_a_second_run_under_a_stored_run_id_is_not_stored_and_says_so(target, caplog):
    for loss in (3.0, float("nan")):
        with tracked_run(SPEC, server=target, run_id="reused") as run:
            run.log(loss)
    assert run.report is not None and not run.report.created
    said = [r.getMessage() for r in caplog.records if "reused" in r.getMessage()]
    assert len(said) == 1 and "was stored before with other values (outcome" in said[0]


def test_an_explore_job_requeued_after_its_report_trains_on_with_the_stored_values(target,
                                                                                  caplog):
    """Killed after reporting (during its last checkpoint's upload, say) and requeued under its
    run_id: the explore it would ask for is refused (the run is stored), so it takes the stored
    run's values instead of failing at start."""
    with tracked_run(SPEC, server=target, run_id="requeued", mode="explore") as first:
        first.log(3.0)
    assert first.report.created
    with tracked_run(SPEC, server=target, run_id="requeued", mode="explore") as again:
        assert again.hyperparameters == first.hyperparameters and again.trial_id == ""
        again.log(3.0)
    assert not again.report.created
    assert "run requeued was reported already (completed): it trains again" in caplog.text


def test_a_run_that_never_trained_is_not_reported(target):
    with pytest.raises(ValueError):
        with tracked_run(SPEC, server=target, run_id="never"):
            raise ValueError("bad config")
    with Client(target) as client:
        assert client.list_runs().runs == []


@pytest.mark.parametrize("how", ["exception", "no loss logged"])
def test_an_explore_run_that_never_trained_leaves_its_trial_to_its_requeued_job(target, how):
    """Its run teaches nothing and is not reported, so the job requeued under its run_id
    (after a crash at start-up, say) is handed the trial again, and its report counts."""
    with Client(target) as client:
        if how == "exception":
            with pytest.raises(ValueError):
                with tracked_run(SPEC, server=target, run_id="never", mode="explore") as run:
                    raise ValueError("NCCL timeout")
        else:
            with tracked_run(SPEC, server=target, run_id="never", mode="explore") as run:
                pass
        assert run.report is None and client.list_runs().runs == []
        assert client.heartbeat(run.trial_id).state is TrialState.RUNNING
        with tracked_run(SPEC, server=target, run_id="never", mode="explore") as requeued:
            requeued.log(2.5, step=1)
        assert requeued.trial_id == run.trial_id
        assert client.get_run("never").trial_id == run.trial_id
        assert client.heartbeat(run.trial_id).state is TrialState.REPORTED


def test_an_unreachable_service_does_not_stop_training(caplog, tmp_path):
    """The report keeps trying for its patience, then is saved for `hparamrec send-unsent`."""
    run = TrackedRun(SPEC, server="127.0.0.1:1", run_id="offline", report_patience_seconds=1,
                     hyperparameters=Hyperparameters(lr=1e-3, batch_size_tokens=64, weight_decay=0.1))
    run.log(2.0)
    started = time.monotonic()
    assert run.finish() is None
    # Waited for, not given up at once: the retries' waits (0.1, 0.2, 0.4 s, each +-50%) stop
    # when the next would pass the patience, after 0.35 s at the soonest (0.5 failed now and then).
    assert 0.3 < time.monotonic() - started < 5
    assert run.unsent_path.parent == tmp_path / "unsent"  # $HPARAMREC_UNSENT_DIR (conftest)
    saved = convert.from_proto(unsent.load(run.unsent_path))
    assert saved.run_id == "offline" and saved.outcome == RunOutcome.completed(2.0)
    assert "could not report run offline for 1 s" in caplog.text
    assert str(run.unsent_path) in caplog.text
    # the directory it was saved in, which need not be the one send-unsent reads by default
    assert f"`hparamrec send-unsent {run.unsent_path.parent}` sends it" in caplog.text


def test_an_unreachable_service_at_the_start_is_waited_for_then_the_fallback_is_used(caplog):
    started = time.monotonic()
    with pytest.raises(UnavailableError):
        with tracked_run(SPEC, server="127.0.0.1:1", recommend_patience_seconds=1):
            pass
    # Waited for, not given up at once: the retries' waits (0.1, 0.2, 0.4 s, each +-50%) stop
    # when the next would pass the patience, after 0.35 s at the soonest (0.5 failed now and then).
    assert 0.3 < time.monotonic() - started < 5
    with tracked_run(SPEC, server="127.0.0.1:1", run_id="fell-back", fallback=HP,
                     recommend_patience_seconds=0, report_patience_seconds=0) as run:
        assert run.hyperparameters == HP and run.trial_id == ""
        run.log(2.0)
    assert "no recommendation for run fell-back after 0 s" in caplog.text
    assert convert.from_proto(unsent.load(run.unsent_path)).hyperparameters == HP


def test_a_process_of_a_job_without_a_process_group_yet_is_warned(target, monkeypatch, caplog):
    """torchrun set WORLD_SIZE, but the run started before init_process_group: each process
    would fetch (and, exploring, be handed a trial) on its own."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with tracked_run(SPEC, server=target, run_id="ungrouped") as run:
        run.log(2.0)
    assert "WORLD_SIZE is 2 but torch.distributed is not initialized" in caplog.text
    caplog.clear()
    with tracked_run(SPEC, server=target, run_id="told", reporting=True) as run:  # it knows
        run.log(2.0)
    assert "WORLD_SIZE" not in caplog.text


def test_send_unsent_says_where_it_found_nothing(target, tmp_path):
    """A mistyped HPARAMREC_UNSENT_DIR said "0 of 0 saved reports sent", not where it looked."""
    import subprocess

    from tests.integration.test_cli import HPARAMREC

    missing = tmp_path / "no-such-dir"
    out = subprocess.run([HPARAMREC, "send-unsent", "--server", target], capture_output=True,
                         text=True, timeout=60,
                         env={**os.environ, "HPARAMREC_UNSENT_DIR": str(missing)})
    assert out.returncode == 0 and out.stdout == f"no saved reports in {missing}\n"


def test_send_unsent_sends_the_saved_reports_and_removes_them(target, client, tmp_path):
    import subprocess

    from tests.integration.test_cli import HPARAMREC

    offline = TrackedRun(SPEC, server="127.0.0.1:1", run_id="later", report_patience_seconds=0,
                         hyperparameters=HP)
    offline.log(2.0)
    offline.finish()
    junk = tmp_path / "unsent" / "junk.json"
    junk.write_text("{not json")

    def send(*paths):
        return subprocess.run([HPARAMREC, "send-unsent", *map(str, paths), "--server", target],
                              capture_output=True, text=True, timeout=60)

    sent = send()  # the default directory: $HPARAMREC_UNSENT_DIR
    assert sent.returncode == 1 and "1 of 2 saved reports sent" in sent.stdout
    assert "run later stored" in sent.stdout and not offline.unsent_path.exists()
    assert f"{junk}: kept: not a saved report (" in sent.stderr and junk.exists()
    binary = tmp_path / "binary" / "figure.json"
    binary.parent.mkdir()
    binary.write_bytes(b"\x89PNG\r\n")
    unreadable = send(binary)  # was the codec's own "'utf-8' codec can't decode byte 0x89 ..."
    assert unreadable.stderr.splitlines()[0] == f"{binary}: kept: not a saved report (not UTF-8 text)"
    assert client.get_run("later").outcome == RunOutcome.completed(2.0)

    def saved(loss):
        return unsent.save(RunReport(run_id="later", spec=SPEC, hyperparameters=HP,
                                     outcome=RunOutcome.completed(loss)), tmp_path / str(loss))

    same = saved(2.0)
    resent = send(same)
    assert resent.returncode == 0 and "run later already stored" in resent.stdout
    assert not same.exists()
    other = saved(2.5)  # the run_id stored with another loss: not this report's run
    refused = send(other)
    assert refused.returncode == 1 and other.exists()
    assert f"{other}: kept: " in refused.stderr and "outcome" in refused.stderr

    # Stored, though the trial it names was closed meanwhile by another run: sent and removed,
    # with the service's warning (it was kept, and sent again in vain, for good).
    trial = client.recommend(SPEC, mode="explore")
    client.report_run(RunReport(run_id="first", spec=SPEC, trial_id=trial.trial_id,
                                hyperparameters=trial.hyperparameters,
                                outcome=RunOutcome.completed(2.1)))
    late = unsent.save(RunReport(run_id="late", spec=SPEC, trial_id=trial.trial_id,
                                 hyperparameters=trial.hyperparameters,
                                 outcome=RunOutcome.completed(2.2)), tmp_path / "late")
    delivered = send(late)
    assert delivered.returncode == 0, delivered.stderr
    assert "run late stored" in delivered.stdout and not late.exists()
    assert "did not take run 'late'" in delivered.stderr


# transformers

def _hf_trainer(tmp_path, callback, data=None, max_steps=4, **arguments):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(**{
        "output_dir": str(tmp_path / "hf"), "max_steps": max_steps,
        "per_device_train_batch_size": MICRO_BATCH, "logging_steps": 1, "report_to": [],
        "save_strategy": "no", "use_cpu": True, "disable_tqdm": True,
        "dataloader_num_workers": 0, **arguments})
    return Trainer(model=Regression(), args=args, train_dataset=data or Samples(),
                   callbacks=[callback])


def test_transformers_callback_applies_the_recommendation_and_reports(target, tmp_path):
    from clients.integrations import HparamrecCallback

    callback = HparamrecCallback(SPEC, server=target, run_id="hf-1")
    trainer = _hf_trainer(tmp_path, callback)
    rec = callback.run.recommendation
    args = trainer.args
    # The global batch: whole micro-batches, as close to the recommendation as they allow; lr
    # and weight decay are the conditional optimum at that batch.
    assert rec.batch_size_tokens == MICRO_BATCH * args.gradient_accumulation_steps * SEQ_LEN
    assert callback.run.pins.batch_size_tokens == rec.batch_size_tokens  # asked again, pinned
    assert args.learning_rate == rec.lr and args.weight_decay == rec.weight_decay
    assert args.max_steps == math.ceil(SPEC["n_tokens"] / rec.batch_size_tokens)
    trainer.train()
    assert trainer.state.global_step == args.max_steps
    assert trainer.optimizer.param_groups[0]["initial_lr"] == rec.lr
    with Client(target) as client:
        stored = client.get_run("hf-1")
    logged = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    mean, n = window_mean(logged, trainer.state.global_step)  # 79 steps: 78 and 79
    assert n == 2 and mean != pytest.approx(logged[-1][1])
    assert stored.outcome.status is RunStatus.COMPLETED
    assert stored.outcome.final_loss == pytest.approx(mean)
    assert stored.metadata["final_loss"] == "mean of 2 losses over steps 78-79 (the last 2% of 79)"
    assert stored.hyperparameters.model_dump() == {
        "lr": rec.lr, "batch_size_tokens": rec.batch_size_tokens,
        "weight_decay": rec.weight_decay, "qat_fraction": 0.0}
    assert stored.recommendation_id == rec.recommendation_id
    assert stored.metadata["integration"] == "transformers"


def test_transformers_callback_reports_divergence_and_stops(target, tmp_path):
    from clients.integrations import HparamrecCallback

    callback = HparamrecCallback(SPEC, server=target, run_id="hf-nan", apply=False)
    trainer = _hf_trainer(tmp_path, callback, Samples(nan_from=2 * MICRO_BATCH), max_steps=50)
    trainer.train()
    assert trainer.state.global_step == 3  # stopped at the first NaN loss
    with Client(target) as client:
        stored = client.get_run("hf-nan")
    assert stored.outcome.status is RunStatus.DIVERGED
    # The last finite loss logged, not a mean.
    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert math.isfinite(logged[1]) and not math.isfinite(logged[2])
    assert stored.outcome.final_loss == pytest.approx(logged[1])
    assert stored.metadata["final_loss"] == "last finite loss logged (step 2)"
    # apply=False: what the arguments said, reported as used.
    assert stored.hyperparameters.lr == trainer.args.learning_rate
    assert stored.hyperparameters.batch_size_tokens == MICRO_BATCH * SEQ_LEN


@pytest.mark.parametrize("restart", [47, 49])
def test_transformers_resumed_run_reports_the_final_loss_of_the_whole_run(target, tmp_path,
                                                                           restart):
    """A job restarted from a checkpoint inside the final-loss window (the window of 50 steps
    is steps 46-50; after step 49 only one loss is left to log) reports what the uninterrupted
    run did."""
    from clients.integrations import HparamrecCallback

    options = {"server": target, "apply": False, "final_loss_window": 0.1}
    saving = {"max_steps": 50, "save_strategy": "steps", "save_steps": restart}
    whole = HparamrecCallback(SPEC, run_id="hf-whole", **options)
    _hf_trainer(tmp_path, whole, **saving).train()
    resumed = HparamrecCallback(SPEC, run_id="hf-resumed", **options)
    trainer = _hf_trainer(tmp_path, resumed, **saving)
    trainer.train(resume_from_checkpoint=str(tmp_path / "hf" / f"checkpoint-{restart}"))
    logged = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    assert [step for step, _ in logged] == list(range(1, 51))  # restored, then logged anew
    mean, n = window_mean(logged, 50, window=0.1)
    with Client(target) as client:
        first, second = client.get_run("hf-whole"), client.get_run("hf-resumed")
    assert n == 5 and second.outcome.status is RunStatus.COMPLETED
    assert second.outcome.final_loss == pytest.approx(mean)
    assert second.outcome.final_loss == pytest.approx(first.outcome.final_loss)
    assert second.metadata["final_loss"] == first.metadata["final_loss"] == \
        "mean of 5 losses over steps 46-50 (the last 10% of 50)"
    assert second.metadata["steps_logged"] == first.metadata["steps_logged"] == "50"


def test_transformers_logged_losses_count_for_their_steps_in_the_window(target, tmp_path):
    """Logged every 4 steps, each loss is the mean over its 4 steps: of the window, steps 44-48,
    the loss logged at 44 stands for one step (41-44) and the one at 48 for four."""
    from clients.integrations import HparamrecCallback

    callback = HparamrecCallback(SPEC, server=target, run_id="hf-every-4", apply=False,
                                 final_loss_window=0.1)
    trainer = _hf_trainer(tmp_path, callback, max_steps=48, logging_steps=4)
    trainer.train()
    logged = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    assert [step for step, _ in logged][-2:] == [44, 48]
    (_, at_44), (_, at_48) = logged[-2:]
    with Client(target) as client:
        stored = client.get_run("hf-every-4")
    assert stored.outcome.final_loss == pytest.approx((at_44 + 4 * at_48) / 5)
    assert stored.outcome.final_loss != pytest.approx((at_44 + at_48) / 2)
    assert stored.metadata["final_loss"] == ("mean of 2 losses over steps 44-48, each weighted "
                                             "by its steps in the window (the last 10% of 48)")


# lightning

def _lightning_module(nan_from=None, fail_at=None):
    import lightning.pytorch as L

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = Regression()
            self.lr, self.weight_decay, self.batch_size = 1e-3, 0.0, MICRO_BATCH
            self.losses = []

        def training_step(self, batch, batch_idx):
            if fail_at is not None and batch_idx == fail_at:
                raise RuntimeError("CUDA error: an illegal memory access")
            loss = self.model(**batch)["loss"]
            # The optimizer step this micro-batch counts towards, and its loss.
            self.losses.append((self.global_step + 1, loss.item()))
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(Samples(nan_from=nan_from), batch_size=self.batch_size)

    return Module()


def _lightning_trainer(callback, max_steps=4):
    import lightning.pytorch as L

    return L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=[callback])


def test_lightning_callback_applies_the_recommendation_and_reports(target):
    from clients.integrations import HparamrecLightningCallback

    callback = HparamrecLightningCallback(SPEC, server=target, run_id="pl-1")
    module, trainer = _lightning_module(), _lightning_trainer(callback)
    trainer.fit(module)
    rec = callback.run.recommendation
    assert rec.batch_size_tokens == MICRO_BATCH * trainer.accumulate_grad_batches * SEQ_LEN
    assert callback.run.pins.batch_size_tokens == rec.batch_size_tokens
    assert trainer.global_step == math.ceil(SPEC["n_tokens"] / rec.batch_size_tokens)
    assert trainer.optimizers[0].param_groups[0]["lr"] == rec.lr == module.lr
    assert trainer.optimizers[0].param_groups[0]["weight_decay"] == rec.weight_decay
    with Client(target) as client:
        stored = client.get_run("pl-1")
    # 79 steps of 2 micro-batches: the 4 micro-batch losses of steps 78 and 79.
    mean, n = window_mean(module.losses, trainer.global_step)
    assert n == 4 and mean != pytest.approx(module.losses[-1][1])
    assert stored.outcome.status is RunStatus.COMPLETED
    assert stored.outcome.final_loss == pytest.approx(mean)
    assert stored.metadata["final_loss"] == "mean of 4 losses over steps 78-79 (the last 2% of 79)"
    assert stored.hyperparameters.lr == rec.lr
    assert stored.hyperparameters.batch_size_tokens == rec.batch_size_tokens
    assert stored.metadata["integration"] == "lightning"


def test_lightning_resumed_fit_reports_the_final_loss_of_the_whole_run(target, tmp_path):
    """A fit resumed from a checkpoint inside the final-loss window (47 of 50 steps: the window
    is steps 46-50) reports the mean of the losses of the whole window, as an uninterrupted fit
    with the same losses would: those of steps 46-47 come back with the checkpoint."""
    import lightning.pytorch as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from clients.integrations import HparamrecLightningCallback

    def fit(run_id, **resume):
        callback = HparamrecLightningCallback(SPEC, server=target, run_id=run_id, apply=False,
                                              final_loss_window=0.1)
        saving = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="{step}",
                                 every_n_train_steps=47, save_top_k=-1)
        trainer = L.Trainer(max_steps=50, accelerator="cpu", devices=1, logger=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[callback, saving])
        module = _lightning_module()
        trainer.fit(module, **resume)
        return module.losses

    whole = fit("pl-whole")
    resumed = fit("pl-resumed", ckpt_path=tmp_path / "checkpoints" / "step=47.ckpt")
    assert resumed[0][0] == 48
    mean, n = window_mean([(s, v) for s, v in whole if s <= 47] + resumed, 50, window=0.1)
    with Client(target) as client:
        stored = client.get_run("pl-resumed")
    assert n == 5 and stored.outcome.status is RunStatus.COMPLETED
    assert stored.outcome.final_loss == pytest.approx(mean)
    assert stored.metadata["final_loss"] == "mean of 5 losses over steps 46-50 (the last 10% of 50)"
    assert stored.metadata["steps_logged"] == "50"


def test_lightning_callback_reports_divergence_and_stops(target):
    from clients.integrations import HparamrecLightningCallback

    callback = HparamrecLightningCallback(SPEC, server=target, run_id="pl-nan", apply=False)
    trainer = _lightning_trainer(callback, max_steps=50)
    module = _lightning_module(nan_from=2 * MICRO_BATCH)
    trainer.fit(module)
    assert trainer.global_step == 3
    with Client(target) as client:
        stored = client.get_run("pl-nan")
    assert stored.outcome.status is RunStatus.DIVERGED
    assert stored.outcome.final_loss == pytest.approx(module.losses[1][1])  # the last finite one
    assert stored.hyperparameters.lr == 1e-3 and stored.hyperparameters.batch_size_tokens == 64


def test_lightning_callback_leaves_a_crash_to_the_resumed_fit(target):
    from clients.integrations import HparamrecLightningCallback

    callback = HparamrecLightningCallback(SPEC, server=target, run_id="pl-crash", apply=False)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        _lightning_trainer(callback).fit(_lightning_module(fail_at=2))
    with Client(target) as client:
        # A hardware fault, not a divergence: left to the fit resumed under the run_id.
        assert client.list_runs().runs == []


def test_a_preempted_lightning_fit_trains_its_trial_on_when_resumed(target, tmp_path):
    """On SIGTERM Lightning raises SIGTERMException (a SystemExit) from its loops: the run is not
    reported, and the fit resumed from its checkpoint under the same run_id gets the same trial
    and reports it."""
    import lightning.pytorch as L
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from clients.integrations import HparamrecLightningCallback

    class Preemption(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 2:
                trainer.save_checkpoint(tmp_path / "preempted.ckpt")
                raise SIGTERMException  # what Lightning's loops raise once SIGTERM arrives

    def callback():
        return HparamrecLightningCallback(SPEC, server=target, run_id="pl-preempted",
                                          mode="explore", fit_steps_to_tokens=False)

    first = callback()
    trainer = _lightning_trainer(first)
    trainer.callbacks.append(Preemption())
    with pytest.raises(SystemExit):
        trainer.fit(_lightning_module())
    assert first.run.trial_id and first.run.report is None
    resumed = callback()
    _lightning_trainer(resumed).fit(_lightning_module(), ckpt_path=tmp_path / "preempted.ckpt")
    assert resumed.run.trial_id == first.run.trial_id
    assert resumed.run.hyperparameters == first.run.hyperparameters
    with Client(target) as client:
        stored = client.get_run("pl-preempted")
    assert stored.outcome.status is RunStatus.COMPLETED and stored.trial_id == first.run.trial_id


def test_the_callbacks_take_the_final_loss_options():
    pytest.importorskip("transformers")
    pytest.importorskip("lightning")
    from clients.integrations import HparamrecCallback, HparamrecLightningCallback

    for cls in (HparamrecCallback, HparamrecLightningCallback):
        callback = cls(SPEC, final_loss_window=0, final_loss_count=7)
        assert (callback.run.final_losses.window, callback.run.final_losses.count) == (0, 7)
        with pytest.raises(ValueError, match="final_loss_window"):
            cls(SPEC, final_loss_window=2)


@pytest.mark.parametrize("integration", ["transformers", "lightning"])
def test_an_explore_trial_the_trainer_cannot_batch_keeps_its_values_and_no_trial_is_left(
        target, database_url, tmp_path, integration):
    """The trial's batch is 7 samples; micro-batches of 4 make 8. The callback trains at 8 with
    the trial's lr and weight decay rather than asking again, pinned, for a second trial (which
    left this one pending until the time-out); the report closes the trial, as the run's own
    configuration since the batch is 14% off."""
    import optuna

    from clients.integrations import HparamrecCallback, HparamrecLightningCallback

    if integration == "transformers":
        callback = HparamrecCallback(SPEC, server=target, run_id="explore-1", mode="explore")
        trainer = _hf_trainer(tmp_path, callback)
        trainer.train()
        lr, steps = trainer.args.learning_rate, trainer.args.gradient_accumulation_steps
    else:
        callback = HparamrecLightningCallback(SPEC, server=target, run_id="explore-1", mode="explore")
        module, trainer = _lightning_module(), _lightning_trainer(callback)
        trainer.fit(module)
        lr, steps = module.lr, trainer.accumulate_grad_batches
    trial = callback.run.recommendation
    batch = MICRO_BATCH * steps * SEQ_LEN
    assert trial.trial_id and batch != trial.batch_size_tokens and lr == trial.lr
    with Client(target) as client:
        stored = client.get_run("explore-1")
        assert client.heartbeat(trial.trial_id).state.value == "superseded"
    assert stored.trial_id == trial.trial_id and stored.hyperparameters.batch_size_tokens == batch
    storage = optuna.storages.RDBStorage(database_url)
    trials = [t for s in optuna.get_all_study_summaries(storage)
              for t in optuna.load_study(study_name=s.study_name, storage=storage).trials]
    assert len(trials) == 2  # the trial handed out (superseded) and the run as its own
    assert not [t for t in trials if t.state is optuna.trial.TrialState.RUNNING]
