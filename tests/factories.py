"""Builders of valid domain objects for tests."""

from benchmark_db.records import RunReport, resolve_spec, validated


def make_report(run_id="run-1", *, n_params=1e9, n_tokens=2e10, lr=1e-3, batch=1 << 20,
                weight_decay=0.1, status="completed", loss=2.5, **extra) -> RunReport:
    spec = resolve_spec(n_params=n_params, n_tokens=n_tokens)
    return validated(RunReport, {
        "run_id": run_id, "spec": spec,
        "hyperparameters": {"lr": lr, "batch_size_tokens": batch, "weight_decay": weight_decay},
        "outcome": {"status": status, "final_loss": loss if status == "completed" else None},
        **extra,
    })
