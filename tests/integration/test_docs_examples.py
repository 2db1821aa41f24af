"""Every example in the docs runs, against a real server, as a reader would run it.

Documents: README.md and docs/*.md (docs/benchmarks.md is written by the benchmark scripts and
holds results, not examples). Each document gets its own server (SQLite at var/hparamrec.db in a
fresh working directory, which is also $HOME; authentication off, as `make run`) with
HPARAMREC_SERVER and HPARAMREC_DATABASE_URL pointing at it, and its blocks run in order:

- ```console: each `$ ` line is a command (bash, in the working directory); it must exit 0, and
  the lines under it, if any, are its output (stdout and stderr, as a terminal shows them). Runs of spaces and table rules
  count as one; a line `...` stands for any lines, `...` in a line for any text.
- ```sh: the whole block is one bash script (set -euo pipefail) that must exit 0.
- ```python: run in one interpreter per document (later blocks see earlier names); must not raise.
  The installed libraries the blocks import (torch, ...) are imported ahead, while the commands
  before them run; only a block's own imports (or earlier blocks') make names it can use.
- Any other language (text, csv, jsonl, ...) is not run. Every fence must name its language, so
  no example can hide from this test.

Markers, on the line(s) right above a fence:
- `<!-- docs-test: skip REASON -->`: not run (a long-running server, an install, TLS files).
- `<!-- docs-test: file NAME -->`: the block is written to NAME in the working directory first.
- `<!-- docs-test: any-numbers -->` (console): numbers in the shown output may differ (values
  that move whenever the laws or models are tuned); the words and the shape must not.
"""

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.docs_examples import (RUN, ExampleError, Session, blocks, check_markers,
                                             output_matches, python_imports)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
NOT_EXAMPLES = {"docs/benchmarks.md"}
DOCUMENTS = sorted({"README.md", *(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))}
                   - NOT_EXAMPLES)


@contextmanager
def session(tmp_path: Path, preload: tuple[str, ...] = ()):
    from tests.integration.in_process_server import running_service

    (tmp_path / "var").mkdir()
    url = f"sqlite:///{tmp_path / 'var' / 'hparamrec.db'}"
    with running_service(url, refit_debounce_seconds=0.1, grace=0) as service:
        env = {**os.environ, "HPARAMREC_SERVER": f"127.0.0.1:{service.port}",
               "HPARAMREC_DATABASE_URL": url, "COLUMNS": "100", "NO_COLOR": "1",
               "HOME": str(tmp_path),  # examples may write dotfiles
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("HPARAMREC_API_KEY", None)
        reader = Session(tmp_path, env, pause=lambda: service.registry.wait_idle(timeout=30),
                         preload=preload)
        try:
            yield service, reader
        finally:
            reader.close()


@pytest.mark.parametrize("doc", DOCUMENTS)
def test_examples_run(doc, tmp_path):
    found = blocks((ROOT / doc).read_text(), doc)
    untagged = [b.where for b in found if not b.lang]
    assert not untagged, f"fences without a language (```console, ```python, ```text ...): {untagged}"
    for block in found:
        check_markers(block)
    with session(tmp_path, libraries(found)) as (service, reader):
        for block in found:
            reader.run(block)
        # Shown trial values are copied into the `report --trial-id` lines after them; were
        # they stale, the report would not close its trial (and any-numbers would hide it).
        assert not superseded_trials(service.settings.database_url), \
            f"{doc}: a report --trial-id example sent values other than its trial's"


def libraries(found) -> tuple[str, ...]:
    """What the document's Python examples import from installed libraries (torch,
    transformers, lightning: seconds each), for its interpreter to import while the commands
    before them run. Neither the standard library (nothing to gain) nor this project's own
    modules: those, the API the examples show, are imported by the blocks alone, in order."""
    return tuple(name for name in python_imports(found)
                 if name.split(".")[0] not in sys.stdlib_module_names
                 and not (ROOT / name.split(".")[0]).exists())


def superseded_trials(url: str) -> list[str]:
    import optuna

    storage = optuna.storages.RDBStorage(url)
    try:
        return [f"{study.study_name} #{trial.number}" for study in storage.get_all_studies()
                for trial in storage.get_all_trials(study._study_id, deepcopy=False)
                if "superseded_by_run" in trial.user_attrs]
    finally:
        storage.engine.dispose()


def test_the_docs_have_examples_and_few_skips():
    found = [b for doc in DOCUMENTS for b in blocks((ROOT / doc).read_text(), doc)]
    run = [b for b in found if b.lang in RUN and b.marker("skip") is None]
    skipped = [b for b in found if b.lang in RUN and b.marker("skip") is not None]
    assert {b.doc for b in run} >= {"README.md", "docs/guide.md", "docs/import-format.md"}
    assert {b.lang for b in run} == RUN
    assert len(skipped) <= len(run) // 4, [f"{b.where}: {b.marker('skip')}" for b in skipped]


# The runner itself: a broken example must fail.

BROKEN = {
    "a failing command": "```console\n$ false\n```\n",
    "wrong output": "```console\n$ echo stored\nalready stored\n```\n",
    "a different number": "```console\n$ echo run 7\nrun 8\n```\n",
    "a failing script": "```sh\ntrue\nfalse\necho never\n```\n",
    "a raising example": "```python\nx = 1\n```\n\n```python\nassert x == 2\n```\n",
    "an unknown name": "```python\nundefined_name\n```\n",
    # preloaded (libraries()), yet no name in the first block's namespace
    "a library imported only later": ("```python\nnumpy.zeros(1)\n```\n\n"
                                      "```python\nimport numpy\n```\n"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_example_fails(name, tmp_path):
    found = blocks(BROKEN[name], "broken.md")
    reader = Session(tmp_path, dict(os.environ), preload=libraries(found))  # as the docs are run
    try:
        with pytest.raises(ExampleError):
            for block in found:
                reader.run(block)
    finally:
        reader.close()


def test_working_examples_pass(tmp_path):
    text = ("<!-- docs-test: file data.txt -->\n```text\nhello\n```\n\n"
            "<!-- docs-test: any-numbers -->\n```console\n$ cat data.txt; echo run 7\nhello\n"
            "run 8\n$ printf 'a\\nb\\nc\\n'\na\n...\n```\n\n"
            "<!-- docs-test: skip never finishes -->\n```sh\nsleep 1000\n```\n\n"
            "```python\nvalue = open('data.txt').read()\n```\n\n```python\nassert value == 'hello\\n'\n```\n")
    reader = Session(tmp_path, dict(os.environ))
    try:
        for block in blocks(text, "ok.md"):
            check_markers(block)
            reader.run(block)
    finally:
        reader.close()


def test_output_matching():
    assert output_matches(["  a   b  "], "a b\n\n", False)
    assert output_matches(["x ... z"], "x yyy z\n", False)
    assert not output_matches(["x"], "x\ny\n", False)
    assert output_matches(["x", "..."], "x\ny\nz\n", False)
    assert output_matches(["── a ──"], "────── a ─\n", False)
    assert not output_matches(["lr 0.00135"], "lr 0.0014\n", False)
    assert output_matches(["lr 0.00135, 1.11M"], "lr 0.0014, 2M\n", True)
