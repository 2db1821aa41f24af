"""Writes one benchmark's section of docs/benchmarks.md, leaving the others as they are."""

from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"
# the real dense sweep, read from beside the project (never copied into it)
STEPLAW_DENSE = ROOT.parent / "shared" / "datasets" / "steplaw-dense" / "dense_lr_bs_loss.csv"
HEADER = ("# Benchmarks\n\nEvery figure here is written by a script in `benchmarks/`, with its "
          "baselines measured in the same run. Rerun a script to refresh its section.\n")


def write_section(name: str, markdown: str, path: Path = BENCHMARKS_MD) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = f"{start}\n{markdown.rstrip()}\n\n_Measured {stamp}._\n{end}"
    text = path.read_text() if path.exists() else HEADER
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def machine() -> str:
    import os
    import platform

    load = os.getloadavg()[0]
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, load average {load:.1f} when it started")
