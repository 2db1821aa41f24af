"""A PyTorch Lightning Callback that trains with hparamrec's recommendation and reports the
outcome.

    trainer = L.Trainer(max_steps=1000, callbacks=[
        HparamrecLightningCallback({"n_params": "124M", "n_tokens": "2.5B", "seq_len": 1024})])
    trainer.fit(module, datamodule)

In setup (before configure_optimizers) the callback fetches a recommendation and sets the
module's `lr` (or `learning_rate`) and `weight_decay` attributes or hparams, found the way
Lightning's own tuner finds them, for configure_optimizers to read. If the module or datamodule
has a `batch_size` (the micro-batch that fits in memory), it sets
trainer.accumulate_grad_batches so the global batch is as close as whole steps allow to the
recommended one, asks again with that batch pinned if it differs (an explore trial keeps its
values: TrackedRun.at_batch), and (with max_steps set) sets max_steps so training sees the
spec's n_tokens at that batch. apply=False, or the caller's own hyperparameters=, trains as
configured (the run is still reported). A module that optimizes manually gets lr and weight
decay only (its batches and steps are its own).

Every training step's loss is checked: the first NaN/inf reports the run as diverged and stops
training (stop_on_divergence). At the end of fit the run is reported as completed with the mean
of the training losses of the last final_loss_window (default 2%) of the optimizer steps run
(every micro-batch's loss, at the step it counts towards); final_loss_window=0 reports the last
loss. The losses collected so far are part of the callback's state in Lightning's checkpoints,
so a fit resumed from one (trainer.fit(..., ckpt_path=...)) reports the window of the whole run,
not only of the steps since the restart. A numerical exception during fit (one naming a NaN,
say) reports the run as diverged; any other (a preemption's SIGTERM, which Lightning raises as
SIGTERMException, Ctrl-C, running out of memory, a bug, a lost node) is not reported, so the fit
resumed or requeued under the same run_id reports the run, with the same trial when exploring. The hyperparameters reported are read from the optimizer
and the train dataloader when training starts. Global rank 0 fetches the recommendation and the
strategy broadcasts it, so every process trains with the same values and an explore hands out
one trial per job. Only global rank 0 reports; with mode="explore"
it also sends the trial's heartbeat every heartbeat_seconds (default 600) of training, so a run
longer than the service's trial time-out keeps its trial.
"""

import logging

from lightning.pytorch import Callback
from lightning.pytorch.utilities.parsing import (lightning_getattr, lightning_hasattr,
                                                 lightning_setattr)

from clients.integrations.distributed import ProcessGroup
from clients.integrations.tracking import TrackedRun, peak_lr, steps_for_tokens
from clients.models import TrainingSpec

log = logging.getLogger("hparamrec.integrations")
LR_NAMES = ("lr", "learning_rate")


class HparamrecLightningCallback(Callback):
    """spec: the TrainingSpec (seq_len must be the sequence length of the training data).
    fit_steps_to_tokens: when the batch is applied and the trainer has max_steps, set max_steps
    so that training sees spec.n_tokens at the applied batch.
    Other options (pins, client, server, api_key, run_id, metadata, mode, final_loss_window,
    heartbeat_seconds) as for TrackedRun: a run of an explore trial sends heartbeats from the
    batch hook."""

    def __init__(self, spec: TrainingSpec | dict, *, apply: bool = True,
                 fit_steps_to_tokens: bool = True, stop_on_divergence: bool = True, **options):
        self.run = TrackedRun(spec, integration="lightning", **options)
        # With the caller's own hyperparameters there is nothing to apply: train as configured
        # and report what training uses.
        self.apply = apply and self.run.hyperparameters is None
        self.fit_steps_to_tokens = fit_steps_to_tokens
        self.stop_on_divergence = stop_on_divergence
        self._step = 0

    def _seq_len(self) -> int:
        return self.run.seq_len

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.run.reporting = trainer.is_global_zero
        # Rank 0 fetches the recommendation, the strategy's broadcast hands it to the others.
        self.run.group = ProcessGroup(trainer.global_rank, trainer.world_size,
                                      lambda value: trainer.strategy.broadcast(value, src=0))
        if stage != "fit" or not self.apply:
            return
        hp = self.run.start()
        if not pl_module.automatic_optimization:
            # The module steps its optimizers itself: gradient accumulation is its own, and
            # trainer.global_step counts every optimizer's steps, so neither the batch nor
            # max_steps can be set from here.
            log.warning("hparamrec: manual optimization: the batch size and max_steps are not "
                        "applied; lr and weight decay are those of the recommended batch")
        elif lightning_hasattr(pl_module, "batch_size"):
            micro = int(lightning_getattr(pl_module, "batch_size")) * max(1, trainer.world_size)
            seq_len = self._seq_len()
            steps = max(1, round(hp.batch_size_tokens / (micro * seq_len)))
            batch = float(micro * steps * seq_len)
            hp = self.run.at_batch(batch)
            trainer.accumulate_grad_batches = steps
            if self.fit_steps_to_tokens and trainer.max_steps > 0:
                total = steps_for_tokens(self.run, batch)
                if total is not None and total != trainer.max_steps:
                    log.info("hparamrec: max_steps %d -> %d: spec.n_tokens at %g tokens per "
                             "step", trainer.max_steps, total, batch)
                    trainer.fit_loop.epoch_loop.max_steps = total
        else:
            log.warning("hparamrec: no batch_size on the module or datamodule: the batch size is "
                        "not applied, and lr and weight decay are those of the recommended batch")
        names = [name for name in LR_NAMES if lightning_hasattr(pl_module, name)]
        if names:
            lightning_setattr(pl_module, names[0], hp.lr)
        else:
            log.warning("hparamrec: the module has no lr or learning_rate: lr not applied")
        if lightning_hasattr(pl_module, "weight_decay"):
            lightning_setattr(pl_module, "weight_decay", hp.weight_decay)
        else:
            log.warning("hparamrec: the module has no weight_decay: weight decay not applied")

    def on_train_start(self, trainer, pl_module) -> None:
        """Records what training actually uses."""
        self.run.warn_if_reused()
        groups = [g for opt in trainer.optimizers for g in opt.param_groups]
        lr = peak_lr(groups) if groups else None
        weight_decay = max(g.get("weight_decay", 0.0) for g in groups) if groups else None
        batch = None
        loader = trainer.train_dataloader
        micro = getattr(loader, "batch_size", None)
        if micro:  # a module that optimizes manually accumulates (if it does) unseen
            steps = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
            batch = float(micro * steps * max(1, trainer.world_size) * self._seq_len())
        recommended = self.run.hyperparameters
        self.run.use_trained(lr=lr, weight_decay=weight_decay, batch_size_tokens=batch,
                     qat_fraction=recommended.qat_fraction if recommended else None)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # The optimizer step this batch counts towards (under gradient accumulation, several
        # batches do; trainer.global_step moves on after the last of them).
        self._step = trainer.global_step + 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            self.run.heartbeat()  # log() sends it otherwise (throttled: heartbeat_seconds)
            return
        # Under automatic optimization Lightning hands over the loss divided by the accumulation
        # steps; a module that optimizes manually returns its loss as it is.
        scale = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
        if trainer.world_size > 1 and hasattr(loss, "detach"):
            # The processes train one run on different batches: its loss is their mean (as the
            # transformers Trainer logs it), and a NaN on any of them stops every one.
            loss = trainer.strategy.reduce(loss.detach(), reduce_op="mean")
        if not self.run.log(float(loss) * scale, step=self._step):
            if self.stop_on_divergence:
                trainer.should_stop = True

    def state_dict(self) -> dict:
        """The losses of the final-loss window so far, saved in Lightning's checkpoints: a fit
        resumed from one (ckpt_path=...) goes on with them."""
        return {"final_losses": self.run.final_losses.state_dict(),
                "last_loss": self.run.last_loss, "steps_logged": self.run.steps_logged}

    def load_state_dict(self, state_dict: dict) -> None:
        if "final_losses" in state_dict:
            self.run.final_losses.load_state_dict(state_dict["final_losses"])
            self.run.last_loss = state_dict.get("last_loss")
            self.run.steps_logged = state_dict.get("steps_logged", 0)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0) -> None:
        # Validation too: a long one would otherwise read as missed heartbeats.
        self.run.heartbeat()

    def on_train_end(self, trainer, pl_module) -> None:
        self.run.finish(last_step=trainer.global_step)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.run.fail(exception)
