"""The launcher integrations keep their explore trial alive: heartbeats, throttled to
heartbeat_seconds, from tracked_run's log() and the callbacks' step hooks; an unreachable
service never stops training."""

import logging
import time

import optuna
import pytest

from clients import Client, TrialState
from clients.integrations import TrackedRun, tracked_run
from clients.integrations.tracking import HEARTBEAT_SECONDS
from predictor.study import _storage_url
from service.server import Service
from service.settings import Settings
from tests.integration.test_heartbeat import serving
from tests.integration.test_integrations import (MICRO_BATCH, SPEC, Samples, _hf_trainer,
                                                _lightning_module)

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path / 'svc.db'}"


@pytest.fixture
def beats(service, monkeypatch) -> list[str]:
    """The trial ids of the heartbeats the server received, in order."""
    received = []
    real = service.refiner.timeouts.heartbeat

    def counting(tenant, trial_id, interval_seconds=0.0):
        received.append(trial_id)
        return real(tenant, trial_id, interval_seconds)

    monkeypatch.setattr(service.refiner.timeouts, "heartbeat", counting)
    return received


def trial_of(url: str, trial_id: str) -> optuna.trial.FrozenTrial:
    study_id, number = (int(x) for x in trial_id.split("-"))
    storage = optuna.storages.RDBStorage(_storage_url(url))
    try:
        return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, number))
    finally:
        storage.engine.dispose()


class Clock:
    """tracking's time.monotonic, moved by the test: the throttle is exact."""

    def __init__(self):
        self.now = 1000.0  # when the trial, and its first heartbeat, come

    def monotonic(self) -> float:
        return self.now


def test_tracked_run_sends_throttled_heartbeats_for_its_trial(target, service, beats, monkeypatch):
    from clients.integrations import tracking

    assert HEARTBEAT_SECONDS == 600
    clock = Clock()
    monkeypatch.setattr(tracking, "time", clock)
    with tracked_run(SPEC, server=target, run_id="beating", mode="explore",
                     heartbeat_seconds=0.5) as run:
        assert beats == [run.trial_id]  # the first, with the trial
        for step in range(1, 101):
            clock.now = 1000.0 + 0.004 * step  # up to 0.4 s after the first: not yet due
            assert run.log(2.0, step=step)
        assert beats == [run.trial_id]
        clock.now = 1000.5  # due
        for step in range(101, 201):
            run.log(2.0, step=step)
        assert beats == [run.trial_id] * 2  # one more, however many losses were logged
        clock.now = 1000.999
        run.log(2.0, step=201)
        assert len(beats) == 2
        clock.now = 1001.0  # 0.5 s after the second
        run.log(2.0, step=202)
        assert beats == [run.trial_id] * 3
        assert run.trial_state is TrialState.RUNNING
        attrs = trial_of(service.settings.database_url, run.trial_id).user_attrs
        assert "last_heartbeat" in attrs and attrs["heartbeat_interval_seconds"] == 0.5
        clock.now = 1100.0
    assert len(beats) == 3  # none after the report, however late
    assert trial_of(service.settings.database_url, run.trial_id).state.name == "COMPLETE"


def test_no_heartbeats_without_a_trial_or_when_switched_off(target, beats):
    with tracked_run(SPEC, server=target, heartbeat_seconds=1e-6) as exploit:  # no trial
        time.sleep(0.01)
        exploit.log(2.0, step=1)
    with tracked_run(SPEC, server=target, mode="explore", heartbeat_seconds=0) as off:
        time.sleep(0.01)
        off.log(2.0, step=1)
        assert off.heartbeat(force=True) is None
    with tracked_run(SPEC, server=target, mode="explore", heartbeat_seconds=1e-6,
                     reporting=False) as other_rank:
        time.sleep(0.01)
        other_rank.log(2.0, step=1)
    assert beats == []
    with pytest.raises(ValueError, match="heartbeat_seconds"):
        TrackedRun(SPEC, heartbeat_seconds=-1)


def test_a_job_that_dies_before_its_first_step_frees_its_trial_after_3_intervals(tmp_path):
    """The first heartbeat goes out with the trial and says the interval, so a job that dies
    while loading its data is given up after 3 missed heartbeats, not at the time-out."""
    with serving(tmp_path, 3600) as svc:
        target = f"127.0.0.1:{svc.port}"
        # An interval long enough that the first explore below, on a slow machine, still
        # comes well within 3 of them.
        dead = TrackedRun(SPEC, server=target, mode="explore", heartbeat_seconds=1.0)
        dead.start()  # ... and the job dies: no loss, no report
        with Client(target, retries=0) as other:
            time.sleep(0.3)
            other.recommend(SPEC, mode="explore")  # another launcher's explore: not yet
            assert trial_of(svc.settings.database_url, dead.trial_id).state.name == "RUNNING"
            time.sleep(3.0)  # 3 x 1 s since the heartbeat
            other.recommend(SPEC, mode="explore")
        given_up = trial_of(svc.settings.database_url, dead.trial_id)
        assert given_up.state.name == "FAIL" and "3 heartbeat intervals" in given_up.user_attrs["timed_out"]


def test_heartbeats_keep_a_run_longer_than_the_time_out_on_its_trial(tmp_path):
    with serving(tmp_path, 1.5) as svc:
        target = f"127.0.0.1:{svc.port}"
        with Client(target, retries=0) as other:
            runs = {}
            for name, every in (("kept", 0.3), ("quiet", 0)):
                with tracked_run(SPEC, server=target, run_id=name, mode="explore",
                                 heartbeat_seconds=every) as run:
                    deadline, step = time.monotonic() + 2.5, 0
                    while time.monotonic() < deadline:  # a run longer than the time-out
                        step += 1
                        run.log(2.0, step=step)
                        time.sleep(0.05)
                    other.recommend(SPEC, mode="explore")  # another launcher's explore expires
                    runs[name] = run
            kept, quiet = (trial_of(svc.settings.database_url, runs[n].trial_id) for n in runs)
            assert kept.state.name == "COMPLETE" and kept.user_attrs["run_id"] == "kept"
            assert quiet.state.name == "FAIL" and "timed_out" in quiet.user_attrs
            assert other.get_run("quiet").trial_id == runs["quiet"].trial_id  # still stored


def test_an_unreachable_service_does_not_stop_a_beating_run(tmp_path, caplog):
    svc = Service(Settings(database_url=f"sqlite:///{tmp_path / 'gone.db'}", port=0,
                           auth_disabled=True, metrics_port=None))
    svc.start()
    caplog.set_level(logging.WARNING, logger="hparamrec.integrations")
    with tracked_run(SPEC, server=f"127.0.0.1:{svc.port}", run_id="orphan", mode="explore",
                     heartbeat_seconds=0.05, report_patience_seconds=0.5) as run:
        run.client.retries = 0
        svc.stop(grace=0)
        for step in range(1, 5):
            time.sleep(0.06)
            assert run.log(2.0, step=step)  # each one due, each one failing
    assert run.outcome.status.value == "completed"
    assert caplog.text.count("could not send the heartbeat") == 1  # warned once
    assert "could not report run orphan" in caplog.text


def test_a_timed_out_trial_is_told_once_and_not_beaten_again(target, service, beats, caplog):
    caplog.set_level(logging.WARNING, logger="hparamrec.integrations")
    with tracked_run(SPEC, server=target, run_id="late", mode="explore",
                     heartbeat_seconds=1e-6) as run:
        storage = service.refiner.studies.storage()
        found = service.refiner.studies.find_trial("default", run.trial_id)[2]
        storage.set_trial_user_attr(found._trial_id, "timed_out", "no report within 1 s")
        storage.set_trial_state_values(found._trial_id, optuna.trial.TrialState.FAIL)
        for step in range(1, 4):
            time.sleep(0.01)
            run.log(2.0, step=step)
        assert run.trial_state is TrialState.TIMED_OUT
    assert beats == [run.trial_id] * 2  # the first, with the trial; one that found it closed
    assert caplog.text.count("is no longer running (timed_out") == 1
    with Client(target) as client:  # the report still counts, as the run's own
        assert client.get_run("late").trial_id == run.trial_id


def test_the_transformers_callback_sends_throttled_heartbeats(target, beats, tmp_path):
    pytest.importorskip("transformers")
    from clients.integrations import HparamrecCallback

    every_step = HparamrecCallback(SPEC, server=target, run_id="hf-beat", mode="explore",
                                   fit_steps_to_tokens=False, heartbeat_seconds=1e-6)
    _hf_trainer(tmp_path, every_step, max_steps=4).train()
    assert len(beats) >= 4 and set(beats) == {every_step.run.trial_id}
    beats.clear()
    throttled = HparamrecCallback(SPEC, server=target, run_id="hf-quiet", mode="explore",
                                  fit_steps_to_tokens=False, heartbeat_seconds=3600)
    _hf_trainer(tmp_path, throttled, max_steps=4).train()
    assert beats == [throttled.run.trial_id] and throttled.run.reported  # the first, with the trial


def test_the_lightning_callback_sends_throttled_heartbeats_and_survives_an_outage(target, beats,
                                                                                  caplog):
    pytest.importorskip("lightning")
    import lightning.pytorch as L

    from clients.integrations import HparamrecLightningCallback

    def trainer(callback, *more):
        return L.Trainer(max_steps=4, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback, *more])

    every_step = HparamrecLightningCallback(SPEC, server=target, run_id="pl-beat", mode="explore",
                                            fit_steps_to_tokens=False, heartbeat_seconds=1e-6)
    trainer(every_step).fit(_lightning_module())
    # One per micro-batch, each one due.
    assert len(beats) >= 4 and set(beats) == {every_step.run.trial_id}
    beats.clear()

    class Outage(L.Callback):
        """The service becomes unreachable once training starts."""

        def on_train_start(self, trainer, pl_module):  # after the first heartbeat, with the trial
            outage.run._client = Client("127.0.0.1:1", retries=0)

    caplog.set_level(logging.WARNING, logger="hparamrec.integrations")
    outage = HparamrecLightningCallback(SPEC, server=target, run_id="pl-outage", mode="explore",
                                        fit_steps_to_tokens=False, heartbeat_seconds=1e-6,
                                        report_patience_seconds=0.5)
    fit = trainer(outage, Outage())
    fit.fit(_lightning_module())
    assert fit.global_step == 4 and beats == [outage.run.trial_id]
    assert caplog.text.count("could not send the heartbeat") == 1


def test_a_server_from_before_heartbeats_is_told_once_and_not_asked_again(caplog):
    from concurrent import futures

    import grpc

    from hparamrec.v1 import recommender_pb2 as pb
    from hparamrec.v1 import recommender_pb2_grpc as pb_grpc

    class BeforeHeartbeat(pb_grpc.RecommenderServiceServicer):
        """Hands out a trial; Heartbeat is UNIMPLEMENTED (the generated default)."""

        calls = 0

        def Recommend(self, request, context):
            return pb.RecommendResponse(recommendation=pb.Recommendation(
                lr=1e-3, batch_size_tokens=64, weight_decay=0.1, trial_id="1-0"))

        def Heartbeat(self, request, context):
            BeforeHeartbeat.calls += 1
            return super().Heartbeat(request, context)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_RecommenderServiceServicer_to_server(BeforeHeartbeat(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    caplog.set_level(logging.WARNING, logger="hparamrec.integrations")
    try:
        run = TrackedRun(SPEC, server=f"127.0.0.1:{port}", mode="explore", heartbeat_seconds=1e-6)
        run.start()
        for step in range(1, 4):
            time.sleep(0.01)
            assert run.log(2.0, step=step)
        assert BeforeHeartbeat.calls == 1
        assert caplog.text.count("predates heartbeats") == 1
        run._close()
    finally:
        server.stop(0)


def test_the_callbacks_send_heartbeats_during_evaluation_too(target, beats, tmp_path):
    """The trial is given up after 3 missed heartbeats of the interval the integrations say: a
    long evaluation pass, with no training step, must not read as missed ones."""
    pytest.importorskip("transformers")
    pytest.importorskip("lightning")
    import lightning.pytorch as L
    from torch.utils.data import DataLoader

    from clients.integrations import HparamrecCallback, HparamrecLightningCallback

    hf = HparamrecCallback(SPEC, server=target, run_id="hf-eval", mode="explore",
                           heartbeat_seconds=1e-6)
    trainer = _hf_trainer(tmp_path, hf, max_steps=4, per_device_eval_batch_size=MICRO_BATCH)
    trainer.evaluate(eval_dataset=Samples(n=3 * MICRO_BATCH))  # before any training step
    assert len(beats) >= 3 and set(beats) == {hf.run.trial_id}

    during_validation = []

    class Count(L.Callback):
        def on_validation_start(self, trainer, pl_module):
            during_validation.append(len(beats))

        def on_validation_end(self, trainer, pl_module):
            during_validation[-1] = len(beats) - during_validation[-1]

    module = _lightning_module()
    module.validation_step = lambda batch, batch_idx: None
    module.val_dataloader = lambda: DataLoader(Samples(n=3 * MICRO_BATCH), batch_size=MICRO_BATCH)
    pl = HparamrecLightningCallback(SPEC, server=target, run_id="pl-eval", mode="explore",
                                    fit_steps_to_tokens=False, heartbeat_seconds=1e-6)
    L.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
              val_check_interval=1, check_val_every_n_epoch=None,
              callbacks=[pl, Count()]).fit(module)
    assert during_validation and all(n >= 3 for n in during_validation)
