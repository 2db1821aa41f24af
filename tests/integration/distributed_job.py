"""One process of a distributed training job, started by torchrun (2 processes on CPU, gloo):
trains the tiny regression of test_integrations through one integration and writes what this
process trained with to OUT/rank<R>.json.

    python -m torch.distributed.run --standalone --nproc_per_node 2 \
        tests/integration/distributed_job.py {tracked_run|transformers|lightning} TARGET MODE OUT
"""

import atexit
import json
import os
import sys
from pathlib import Path

FINISHED = []  # set once main() has returned


@atexit.register  # first registered, so run last: after every other exit handler
def _skip_the_teardown():
    """A process that finished leaves without the interpreter's teardown of torch,
    transformers and lightning, which takes 1-2 s per process here (~3 s of each job, torchrun
    waiting for both): by now its output is written, gloo's group destroyed, the non-daemon
    threads joined and every exit handler (the libraries', the integrations') run. A process
    that failed exits as usual, with its error and exit code."""
    if FINISHED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


import torch  # noqa: E402  (after the handler above: its own exit handlers run before it)

from tests.integration.test_integrations import (MICRO_BATCH, SPEC, Regression, Samples,
                                                _hf_trainer, _lightning_module)


def tracked(target: str, mode: str, out: Path):
    from clients.integrations import tracked_run

    torch.distributed.init_process_group("gloo")
    model = Regression()
    with tracked_run(SPEC, server=target, mode=mode, run_id="dist-job",
                     recommend_patience_seconds=1) as run:
        optimizer = torch.optim.AdamW(model.parameters(), lr=run.hyperparameters.lr)
        loader = torch.utils.data.DataLoader(Samples(), batch_size=MICRO_BATCH)
        for step, batch in zip(range(1, 4), loader):
            loss = model(**batch)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            run.log(loss, step=step)
    return run


def transformers(target: str, mode: str, out: Path):
    from clients.integrations import HparamrecCallback

    callback = HparamrecCallback(SPEC, server=target, mode=mode, run_id="dist-job")
    _hf_trainer(out, callback, max_steps=3, ddp_backend="gloo").train()
    return callback.run


def lightning(target: str, mode: str, out: Path):
    import lightning.pytorch as L

    from clients.integrations import HparamrecLightningCallback

    callback = HparamrecLightningCallback(SPEC, server=target, mode=mode, run_id="dist-job",
                                          fit_steps_to_tokens=False)
    L.Trainer(max_steps=3, accelerator="cpu", devices=2, strategy="ddp", logger=False,
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              callbacks=[callback]).fit(_lightning_module())
    return callback.run


def main() -> None:
    framework, target, mode, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    rank = int(os.environ["RANK"])
    run = {"tracked_run": tracked, "transformers": transformers, "lightning": lightning}[framework](
        target, mode, out / f"rank{rank}")
    hp = run.hyperparameters
    (out / f"rank{rank}.json").write_text(json.dumps({
        "trial_id": run.trial_id, "lr": hp.lr, "batch_size_tokens": hp.batch_size_tokens,
        "weight_decay": hp.weight_decay, "reported": run.report is not None,
        "last_loss": run.last_loss}))
    # Left to the interpreter's exit, gloo's threads sometimes abort the process (SIGABRT).
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
    FINISHED.append(True)
