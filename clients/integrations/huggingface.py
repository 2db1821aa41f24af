"""A Hugging Face `transformers` TrainerCallback that trains with hparamrec's recommendation and
reports the outcome.

    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[HparamrecCallback({"n_params": "124M", "n_tokens": "2.5B",
                                                    "seq_len": 1024})])
    trainer.train()

When the Trainer is built (on_init_end, before it creates its optimizer) the callback fetches a
recommendation and sets args.learning_rate, args.weight_decay and, keeping
per_device_train_batch_size (what fits in memory), args.gradient_accumulation_steps so the
global batch is as close as whole steps allow to the recommended one. If that batch is not the
recommended one, it asks again with the batch pinned, so lr and weight decay are the conditional
optimum for the batch actually used (an explore trial keeps its values: TrackedRun.at_batch).
With args.max_steps set, it sets max_steps so training sees the spec's n_tokens at that batch
(fit_steps_to_tokens=False keeps yours). apply=False trains with the arguments as they are (the
run is still reported).

It turns off args.logging_nan_inf_filter (which would hide a NaN loss behind the mean of the
previous ones), watches every logged training loss, and on the first NaN/inf reports the run as
diverged and stops training (stop_on_divergence). At the end of training it reports the run as
completed with the mean of the losses logged over the last final_loss_window (default 2%) of the
steps run, at least the last one (so log often enough: logging_steps); final_loss_window=0
reports the last logged loss. Each logged loss is the Trainer's mean over the steps since the
previous log, and counts in the mean for as many of those steps as fall in the window. The
losses are read at the end from state.log_history, which a job resumed from a checkpoint
(train(resume_from_checkpoint=...)) restores: the window is that of the whole run, not of the
steps since the restart (the losses the callback saw fill in steps the history lacks). In a
distributed job, the main process fetches the recommendation and torch.distributed hands it to
the others, so every process trains with the same values and an explore hands out one trial per
job; only the main process reports. With mode="explore", the main process also sends the trial's heartbeat
every heartbeat_seconds (default 600) of training steps, so a run longer than the service's
trial time-out keeps its trial. An exception inside
Trainer.train() is not seen by callbacks: wrap train() in a `tracked_run` if you want those
reported.
"""

import logging

from transformers import TrainerCallback

from clients.integrations.tracking import TrackedRun, peak_lr, steps_for_tokens
from clients.models import TrainingSpec

log = logging.getLogger("hparamrec.integrations")


class HparamrecCallback(TrainerCallback):
    """spec: the TrainingSpec (seq_len must be the sequence length of the training data).
    fit_steps_to_tokens: when the batch is applied and args.max_steps is set, set max_steps so
    that training sees spec.n_tokens at the applied batch.
    Other options (pins, client, server, api_key, run_id, metadata, mode, final_loss_window,
    heartbeat_seconds) as for TrackedRun: losses are logged at state.global_step, and a run of
    an explore trial sends heartbeats from the step hook."""

    def __init__(self, spec: TrainingSpec | dict, *, apply: bool = True,
                 fit_steps_to_tokens: bool = True, stop_on_divergence: bool = True, **options):
        self.run = TrackedRun(spec, integration="transformers", **options)
        # With the caller's own hyperparameters there is nothing to apply: train as configured
        # and report what training uses.
        self.apply = apply and self.run.hyperparameters is None
        self.fit_steps_to_tokens = fit_steps_to_tokens
        self.stop_on_divergence = stop_on_divergence
        self._applied = False

    def on_init_end(self, args, state, control, **kwargs):
        args.logging_nan_inf_filter = False
        if self.apply:
            self._apply(args)

    def _apply(self, args) -> None:
        hp = self.run.start()
        seq_len = self._seq_len()
        micro = args.per_device_train_batch_size * max(1, args.world_size)
        steps = max(1, round(hp.batch_size_tokens / (micro * seq_len)))
        batch = float(micro * steps * seq_len)
        hp = self.run.at_batch(batch)
        args.learning_rate = hp.lr
        args.weight_decay = hp.weight_decay
        args.gradient_accumulation_steps = steps
        if self.fit_steps_to_tokens and args.max_steps > 0:
            total = steps_for_tokens(self.run, batch)
            if total is not None and total != args.max_steps:
                log.info("hparamrec: max_steps %d -> %d: spec.n_tokens at %g tokens per step",
                         args.max_steps, total, batch)
                args.max_steps = total
        self._applied = True

    def _seq_len(self) -> int:
        return self.run.seq_len

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.run.reporting = state.is_world_process_zero
        self.run.warn_if_reused()
        if self.apply and not self._applied:
            log.warning("hparamrec: the callback was added after the Trainer was built, so the "
                        "recommendation could not be applied; pass it in Trainer(callbacks=[...])")
        lr, weight_decay = args.learning_rate, args.weight_decay
        if optimizer is not None and optimizer.param_groups:  # a custom optimizer wins
            lr = peak_lr(optimizer.param_groups)
            weight_decay = max(g.get("weight_decay", 0.0) for g in optimizer.param_groups)
        batch = (args.per_device_train_batch_size * max(1, args.world_size)
                 * args.gradient_accumulation_steps * self._seq_len())
        recommended = self.run.hyperparameters
        self.run.use_trained(lr=lr, weight_decay=weight_decay, batch_size_tokens=float(batch),
                     qat_fraction=recommended.qat_fraction if recommended else None)
        if recommended is not None and self._applied and abs(lr / recommended.lr - 1) > 1e-6:
            log.warning("hparamrec: training with lr %g, not the recommended %g (a custom "
                        "optimizer?); reporting %g", lr, recommended.lr, lr)

    def on_step_end(self, args, state, control, **kwargs):
        self.run.heartbeat()  # an explore trial's run is still going (throttled: heartbeat_seconds)

    def on_prediction_step(self, args, state, control, **kwargs):
        # Evaluation too: a long one would otherwise read as missed heartbeats.
        self.run.heartbeat()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and not self.run.log(logs["loss"], step=state.global_step):
            if self.stop_on_divergence:
                control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        # A job resumed from a checkpoint saw only the losses logged since; state.log_history,
        # restored from the checkpoint, holds every loss logged with its step.
        if not self.run.reported:
            history = [(entry["step"], entry["loss"]) for entry in state.log_history
                       if "loss" in entry and "step" in entry]
            self.run.final_losses = self.run.final_losses.merged(history)
            self.run.steps_logged = max(self.run.steps_logged, len(history))
        self.run.finish(last_step=state.global_step)
