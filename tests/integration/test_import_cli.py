"""`hparamrec import` (the installed console script) against real SQLite and PostgreSQL."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark_db.store import RunStore

pytestmark = pytest.mark.integration
HPARAMREC = str(Path(sys.executable).parent / "hparamrec")

STEPLAW = """h,ffnh,numh,numl,lr,bs,ti,loss,smooth loss,exp_name,D,N,D/N
960,9368,15,7,0.0006905,256,7629,2.6531,2.6428,lr6.905e-04,4000000000,214663680,18.63
960,9368,15,7,0.001953,256,7629,2.6367,2.6275,lr1.953e-03,4000000000,214663680,18.63
960,9368,15,7,0.02209,256,7629,7.3519,7.3381,lr2.209e-02,4000000000,214663680,18.63
"""
GENERIC_HEADER = "run_id,n_params,n_tokens,lr,batch_size_tokens,weight_decay,final_loss\n"


def cli(*args, env=None):
    return subprocess.run([HPARAMREC, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def stored(url: str, tenant: str = "default") -> int:
    store = RunStore(url)
    try:
        return store.count(tenant)
    finally:
        store.close()


@pytest.fixture
def steplaw_file(tmp_path) -> Path:
    path = tmp_path / "sweep.csv"
    path.write_text(STEPLAW)
    return path


def test_importing_twice_adds_nothing_the_second_time(database_url, steplaw_file):
    first = cli("import", "--db", database_url, "--format", "steplaw", "--json", str(steplaw_file))
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"read": 3, "added": 3, "already_stored": 0, "diverged": 1,
                                             "conflicting": []}
    again = cli("import", "--db", database_url, "--format", "steplaw", "--json", str(steplaw_file))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"read": 3, "added": 0, "already_stored": 3, "diverged": 1,
                                             "conflicting": []}
    assert stored(database_url) == 3


def test_a_run_stored_before_with_other_values_is_kept_and_named(database_url, tmp_path):
    """A later file with the same run_id and another loss was counted as already stored, with
    nothing to say the loss in the file was not the one stored."""
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text(GENERIC_HEADER + "x1,1e9,2e10,1e-3,1e6,0.1,2.5\n")
    second.write_text(GENERIC_HEADER + "x1,1e9,2e10,1e-3,1e6,0.1,2.9\n"
                                       "x2,1e9,2e10,2e-3,1e6,0.1,2.6\n")
    assert cli("import", "--db", database_url, "--format", "csv", str(first)).returncode == 0
    out = cli("import", "--db", database_url, "--format", "csv", "--json", str(second))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["conflicting"] == ["x1"]
    assert json.loads(out.stdout)["added"] == 1
    assert "warning: 1 run(s) were stored before with other values" in out.stderr
    assert "'x1'" in out.stderr
    store = RunStore(database_url)
    try:
        assert store.get("default", "x1").outcome.final_loss == 2.5
    finally:
        store.close()


def test_bad_row_exits_2_with_one_line_and_stores_nothing(database_url, tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text(GENERIC_HEADER + "a,1e9,2e10,1e-3,1e6,0.1,2.5\n"
                                     "b,1e9,2e10,-1e-3,1e6,0.1,2.6\n")
    out = cli("import", "--db", database_url, "--format", "csv", str(path))
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "row 3: lr: " in lines[0]
    assert out.stdout == ""
    assert stored(database_url) == 0


@pytest.mark.parametrize("field, value, named", [
    ("recommendation_id", "rec\x00", "recommendation_id"),
    ("metadata", {"note": "a\x00b"}, "metadata['note']"),
    ("metadata", {"no\x00te": "v"}, "metadata"),
])
def test_text_the_database_cannot_store_is_a_row_error(database_url, tmp_path, field, value,
                                                       named):
    """A NUL (JSON's \\u0000) is no PostgreSQL text: the import ended in a traceback there."""
    good = {"run_id": "a", "n_params": 1e9, "n_tokens": 2e10, "lr": 1e-3,
            "batch_size_tokens": 1e6, "weight_decay": 0.1, "final_loss": 2.5}
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "run_id": "b", field: value})
                    + "\n")
    out = cli("import", "--db", database_url, "--format", "jsonl", str(path))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert f"row 2: {named}: " in lines[0]
    assert stored(database_url) == 0


def test_human_output_counts_runs(tmp_path, steplaw_file):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    out = cli("import", "--db", url, "--format", "steplaw", str(steplaw_file))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "read 3 runs (1 diverged): 3 added, 0 already stored\n"
    # No progress counter when stderr is not a terminal: only the note of the new database.
    assert out.stderr == f"note: created a new database at {tmp_path / 'runs.db'}\n"


def test_a_new_database_made_for_want_of_db_is_pointed_out(tmp_path, steplaw_file):
    """Without --db (or its variable) the database is ./var/hparamrec.db: run from another
    directory than the server's, the runs would land where no server reads them."""
    env = {k: v for k, v in os.environ.items() if k != "HPARAMREC_DATABASE_URL"}

    def run():
        return subprocess.run([HPARAMREC, "import", "--format", "steplaw", str(steplaw_file)],
                              capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)

    first, again = run(), run()
    assert first.returncode == again.returncode == 0
    made = tmp_path / "var" / "hparamrec.db"
    assert first.stderr == (f"note: created a new database at {made} (no --db given: the "
                            "default is relative to the current directory)\n")
    assert again.stderr == ""  # the same database, found this time
    assert again.stdout == "read 3 runs (1 diverged): 0 added, 3 already stored\n"


def test_database_and_tenant_from_env_and_option(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps({"n_params": 1e9, "n_tokens": 2e10, "lr": 1e-3,
                                "batch_size_tokens": 1e6, "weight_decay": 0.1,
                                "final_loss": 2.5}) + "\n")
    out = cli("import", "--format", "jsonl", "--tenant", "lab", str(path),
              env={"HPARAMREC_DATABASE_URL": url})
    assert out.returncode == 0, out.stderr
    assert (stored(url, "lab"), stored(url, "default")) == (1, 0)


@pytest.mark.parametrize("args, needle", [
    (["--db", "not a url", "--format", "csv"], "--db"),
    (["--db", "{tmp}/r.db", "--format", "csv"], "--db: '{tmp}/r.db' is not a database URL: for "
                                                "that SQLite file give sqlite:///{tmp}/r.db"),
    (["--db", "sqlite:///{tmp}/r.db", "--format", "parquet"], "--format"),
    (["--db", "sqlite:///{tmp}/r.db", "--format", "csv", "--tenant", "t"], "runs.csv"),
])
def test_usage_errors_are_one_line_exit_2(tmp_path, args, needle):
    path = tmp_path / "runs.csv"
    path.write_text("n_params,lrr\n1e9,1e-3\n")
    out = cli("import", *[a.format(tmp=tmp_path) for a in args], str(path))
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert needle.format(tmp=tmp_path) in lines[0]


def test_missing_file_is_one_line_exit_2(tmp_path):
    out = cli("import", "--db", f"sqlite:///{tmp_path / 'r.db'}", "--format", "csv",
              str(tmp_path / "absent.csv"))
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1


def test_a_deeply_nested_jsonl_line_is_a_row_error(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"metadata": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    out = subprocess.run([HPARAMREC, "import", "--db", f"sqlite:///{tmp_path / 'd.db'}",
                          "--format", "jsonl", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"error: {path}: row 1: not valid JSON: nested too deeply"


def test_a_client_only_install_is_told_what_the_admin_commands_need(tmp_path):
    """A client-only install (no hparamrec[server]) got a ModuleNotFoundError traceback."""
    script = ("import sys; sys.modules['sqlalchemy'] = None; from clients.cli import main; "
              f"sys.exit(main(['keys', 'list', '--db', 'sqlite:///{tmp_path}/k.db']))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1
    assert out.stderr == ("error: this command needs the service's packages (sqlalchemy is not "
                          "installed): pip install 'hparamrec[server]'\n")
