"""The integrations with the caller's own hyperparameters, a module that optimizes manually, and
a scheduler that keeps the peak lr elsewhere: what trains is what is reported."""

import pytest
import torch

from clients import Client
from tests.integration.test_integrations import (MICRO_BATCH, SEQ_LEN, SPEC, _hf_trainer,
                                                _lightning_module, _lightning_trainer)

pytestmark = pytest.mark.integration
OWN = {"lr": 1e-3, "batch_size_tokens": MICRO_BATCH * 3 * SEQ_LEN, "weight_decay": 0.0}


@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path / 'svc.db'}"


def test_the_transformers_callback_with_own_hyperparameters_trains_them_as_configured(
        target, tmp_path):
    """It crashed building the Trainer (no recommendation to fit steps to), and at another batch
    it asked the service and trained with the recommendation instead of the caller's values."""
    pytest.importorskip("transformers")
    from clients.integrations import HparamrecCallback

    callback = HparamrecCallback(SPEC, server=target, run_id="hf-own", hyperparameters=OWN)
    trainer = _hf_trainer(tmp_path, callback, learning_rate=2e-3, weight_decay=0.01)
    assert callback.run.recommendation is None  # nothing asked, nothing applied
    assert (trainer.args.learning_rate, trainer.args.max_steps) == (2e-3, 4)
    trainer.train()
    with Client(target) as client:
        stored = client.get_run("hf-own")
    assert (stored.hyperparameters.lr, stored.hyperparameters.weight_decay) == (2e-3, 0.01)
    assert stored.hyperparameters.batch_size_tokens == MICRO_BATCH * SEQ_LEN  # what trained


def test_the_lightning_callback_with_own_hyperparameters_trains_them_as_configured(target):
    pytest.importorskip("lightning")
    from clients.integrations import HparamrecLightningCallback

    callback = HparamrecLightningCallback(SPEC, server=target, run_id="pl-own",
                                          hyperparameters=OWN)
    module, trainer = _lightning_module(), _lightning_trainer(callback)
    trainer.fit(module)
    assert callback.run.recommendation is None and module.lr == 1e-3
    with Client(target) as client:
        stored = client.get_run("pl-own")
    assert stored.hyperparameters.lr == 1e-3
    assert stored.hyperparameters.batch_size_tokens == MICRO_BATCH * SEQ_LEN


def test_a_lightning_module_that_optimizes_manually_reports_its_own_loss_and_batch(target):
    """The callback set accumulate_grad_batches (which manual optimization ignores) and scaled
    the loss by it: the stored final loss was 30x the real one, at a batch never trained."""
    pytest.importorskip("lightning")
    from clients.integrations import HparamrecLightningCallback

    module = _lightning_module()
    module.automatic_optimization = False
    plain = type(module).training_step

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        optimizer.zero_grad()
        loss = plain(self, batch, batch_idx)
        self.manual_backward(loss)
        optimizer.step()
        return loss

    module.training_step = training_step.__get__(module)
    callback = HparamrecLightningCallback(SPEC, server=target, run_id="pl-manual")
    trainer = _lightning_trainer(callback, max_steps=6)
    trainer.fit(module)
    assert trainer.accumulate_grad_batches == 1 and trainer.global_step == 6
    with Client(target) as client:
        stored = client.get_run("pl-manual")
    last = [loss for step, loss in module.losses if step == 6]
    assert stored.outcome.final_loss == pytest.approx(last[-1])  # 6 steps: the window is one
    assert stored.hyperparameters.batch_size_tokens == MICRO_BATCH * SEQ_LEN
    assert stored.hyperparameters.lr == callback.run.recommendation.lr == module.lr


def test_the_peak_lr_of_a_one_cycle_schedule_is_reported(target, tmp_path):
    """OneCycleLR keeps its peak in max_lr and sets initial_lr to max_lr / 25: that was
    reported, 25x below what trained."""
    pytest.importorskip("transformers")
    from clients.integrations import HparamrecCallback
    from tests.integration.test_integrations import Regression, Samples
    from transformers import Trainer, TrainingArguments

    model = Regression()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=4)
    callback = HparamrecCallback(SPEC, server=target, run_id="hf-1cycle", apply=False)
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=4, logging_steps=1,
                             per_device_train_batch_size=MICRO_BATCH, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=Samples(), optimizers=(optimizer, schedule),
            callbacks=[callback]).train()
    with Client(target) as client:
        assert client.get_run("hf-1cycle").hyperparameters.lr == 1e-3


def test_a_callback_trained_with_twice_says_the_second_run_is_not_reported(target, tmp_path,
                                                                           caplog):
    """A callback tracks one run, reported once: the second training was silently unreported."""
    pytest.importorskip("transformers")
    pytest.importorskip("lightning")
    from clients.integrations import HparamrecCallback, HparamrecLightningCallback

    caplog.set_level("WARNING", logger="hparamrec.integrations")
    hf = HparamrecCallback(SPEC, server=target, run_id="hf-twice", apply=False)
    trainer = _hf_trainer(tmp_path, hf)
    trainer.train()
    assert "already reported" not in caplog.text
    trainer.train()
    assert caplog.text.count("run hf-twice was already reported; this training will not be") == 1
    pl = HparamrecLightningCallback(SPEC, server=target, run_id="pl-twice", apply=False)
    _lightning_trainer(pl).fit(_lightning_module())
    _lightning_trainer(pl).fit(_lightning_module())
    assert caplog.text.count("run pl-twice was already reported; this training will not be") == 1
