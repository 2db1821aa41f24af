"""Redraws the figures of the docs: `python scripts/docs_figures.py`.

docs/landscape.png is what `hparamrec plot --params 1.3B --tokens 100B` draws at that point of
docs/guide.md: a fresh service (SQLite in a temporary directory) with the guide's two reported
runs stored.
"""

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clients import Client, Hyperparameters, RunOutcome, TrainingSpec  # noqa: E402
from clients import plot  # noqa: E402
from clients.models import Pins  # noqa: E402
from service.server import Service  # noqa: E402
from service.settings import Settings  # noqa: E402

SPEC = TrainingSpec(n_params="1.3B", n_tokens="100B")
GUIDE_RUNS = [
    ("guide-1", Hyperparameters(lr=1.2e-3, batch_size_tokens="1M", weight_decay=0.1),
     RunOutcome.completed(2.41)),
    ("guide-2", Hyperparameters(lr=2e-2, batch_size_tokens="1M", weight_decay=0.1),
     RunOutcome.diverged()),
]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        service = Service(Settings(database_url=f"sqlite:///{tmp}/docs.db", port=0,
                                   auth_disabled=True, metrics_port=None,
                                   refit_debounce_seconds=0))
        service.start()
        try:
            with Client(f"127.0.0.1:{service.port}") as client:
                for run_id, hp, outcome in GUIDE_RUNS:
                    client.report_run(run_id=run_id, spec=SPEC, hyperparameters=hp, outcome=outcome)
                service.registry.wait_idle(timeout=60)
                rec, runs, grid = plot.landscape(client, SPEC, Pins())
            plot.draw(str(ROOT / "docs" / "landscape.png"), rec, runs, grid)
        finally:
            service.stop(grace=0)


if __name__ == "__main__":
    main()
