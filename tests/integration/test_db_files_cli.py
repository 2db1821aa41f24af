"""What the commands that open --db themselves (import, keys, serve) make of the file it names:
not an SQLite database, another program's database, an empty file, an older hparamrec schema,
no file at all. Real files, the installed console script."""

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.integration
HPARAMREC = str(Path(sys.executable).parent / "hparamrec")
RUNS = ("run_id,n_params,n_tokens,lr,batch_size_tokens,weight_decay,final_loss\n"
        "x1,1e9,2e10,1e-3,1e6,0.1,2.5\n")
COMMANDS = {
    "keys list": ["keys", "list"],
    "keys create": ["keys", "create", "--tenant", "t"],
    "keys revoke": ["keys", "revoke", "0123456789ab"],
    "import": ["import", "--format", "csv", "{runs}"],
    "serve": ["serve", "--no-auth", "--port", "0", "--metrics-port", "off"],
}
READERS = ["keys list", "keys revoke"]  # what is stored must be there: they create nothing


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([HPARAMREC, *args], capture_output=True, text=True, timeout=timeout)


def run(command: str, db: Path | str, tmp_path: Path) -> subprocess.CompletedProcess:
    runs = tmp_path / "runs.csv"
    runs.write_text(RUNS)
    url = db if isinstance(db, str) else f"sqlite:///{db}"
    return cli(*[a.format(runs=runs) for a in COMMANDS[command]], "--db", url)


def files(directory: Path) -> dict[str, bytes]:
    """Every file of the directory with its content: what a refused command must leave alone
    (no -wal, -shm, -journal or .serve-lock beside the database either)."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def other_programs_database(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE foo (x)")
    connection.execute("INSERT INTO foo VALUES (1)")
    connection.commit()
    connection.close()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_file_that_is_not_sqlite_is_refused_in_one_line_and_left_alone(tmp_path, command):
    """A --db naming an image, a CSV or /etc/passwd gave SQLAlchemy's 100-line traceback
    ("file is not a database"), exit 1; serve also left a .serve-lock beside it."""
    path = tmp_path / "data" / "landscape.png"
    path.parent.mkdir()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    before = files(path.parent)
    out = run(command, path, tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [f"error: --db: {path} is not an SQLite database"]
    assert files(path.parent) == before


def test_a_directory_is_refused_in_one_line(tmp_path):
    out = run("keys create", tmp_path, tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [f"error: --db: {tmp_path} is a directory, not an SQLite "
                                       "database"]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_another_programs_database_is_refused_and_left_alone(tmp_path, command):
    """A mistyped path into another program's SQLite database: keys list answered "no API
    keys" and every command added hparamrec's tables to it."""
    path = tmp_path / "data" / "other.db"
    other_programs_database(path)
    before = files(path.parent)
    out = run(command, path, tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [f"error: --db: {path} is not an hparamrec database: it "
                                       "holds other tables (foo) and none of hparamrec's"]
    assert files(path.parent) == before


@pytest.mark.parametrize("command", READERS)
def test_keys_list_and_revoke_on_an_empty_file_say_so_and_leave_it_empty(tmp_path, command):
    """An empty file is no database of ours to read: keys list made one in it to answer "no
    API keys". A writing command may make it."""
    path = tmp_path / "data" / "empty.db"
    path.parent.mkdir()
    path.touch()
    out = run(command, path, tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [f"error: --db: {path} is empty: it holds no hparamrec "
                                       "database"]
    assert files(path.parent) == {"empty.db": b""}
    created = run("keys create", path, tmp_path)  # the file existed: no note of a new one
    assert created.returncode == 0 and created.stderr.startswith("key id ")
    assert len(created.stderr.splitlines()) == 1
    assert run("keys list", path, tmp_path).stdout.split()[1:3] == ["t", "active"]


def test_keys_list_reads_an_older_schema_without_migrating_it(tmp_path):
    """Reading must not change the database (a server of the older release may be serving
    it); writing commands and the server bring it forward."""
    from benchmark_db.migrate import upgrade

    path = tmp_path / "old.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    upgrade(engine, "0002")  # runs and api_keys, as that release left them
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO api_keys (key_id, key_hash, tenant, label, created_at) "
                             "VALUES ('0123456789ab', :h, 'team', 'old', '2024-01-01 00:00:00')"),
                     {"h": "0" * 64})

    def revision() -> str:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT version_num FROM hparamrec_alembic_version")
                                ).scalar()

    out = run("keys list", path, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:3] == ["0123456789ab", "team", "active"]
    assert revision() == "0002"
    assert run("import", path, tmp_path).returncode == 0  # a writer migrates it, as serve does
    assert revision() != "0002"
    engine.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_keys_list_on_a_postgresql_database_without_our_tables_creates_none(database_url,
                                                                           tmp_path):
    out = run("keys list", database_url, tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.splitlines()) == 1
    assert out.stderr.startswith("error: --db: postgresql")
    assert out.stderr.endswith(" is empty: it holds no hparamrec database\n")
    engine = sa.create_engine(sa.make_url(database_url).set(drivername="postgresql+psycopg"))
    with engine.connect() as conn:
        assert sa.inspect(conn).get_table_names() == []
    engine.dispose()
    assert run("keys create", database_url, tmp_path).returncode == 0  # a writer makes them


@pytest.mark.parametrize("command", ["import", "keys create"])
def test_a_writing_command_says_when_it_makes_a_new_database(tmp_path, command):
    """A mistyped --db made a new database (and its directories) without a word."""
    path = tmp_path / "typo" / "sub.db"
    out = run(command, path, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines()[0] == f"note: created a new database at {path}"
    again = run(command, path, tmp_path)  # found this time: nothing to say
    assert again.returncode == 0 and "note:" not in again.stderr


@pytest.mark.parametrize("command, args, error", [
    ("import", ["import", "--format", "csv", "{bad}"], "error: {bad}: row 2: lr: "),
    ("keys create", ["keys", "create", "--tenant", "t", "--label", "a\nb"], "error: --label: "),
    ("keys create", ["keys", "create", "--tenant", "-t"], "error: --tenant: "),
    ("import", ["import", "--format", "csv", "--tenant", "-t", "{good}"], "error: --tenant: "),
])
def test_a_refused_command_makes_no_database(tmp_path, command, args, error):
    """The input is checked before the database is opened: a bad row or label left a new,
    empty database behind."""
    bad, good = tmp_path / "bad.csv", tmp_path / "good.csv"
    bad.write_text(RUNS.replace("1e-3", "-1e-3"))
    good.write_text(RUNS)
    path = tmp_path / "new" / "runs.db"
    out = cli(*[a.format(bad=bad, good=good) for a in args], "--db", f"sqlite:///{path}")
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.splitlines()) == 1
    assert out.stderr.startswith(error.format(bad=bad))
    assert not path.parent.exists()


def test_a_second_server_through_a_symlink_to_the_file_is_refused(tmp_path):
    """The lock beside the file was named from the path as given: a symlink to the file had a
    lock of its own, and two servers handed the same explore trial to two launchers."""
    from service.sqlite_lock import SqliteFileTaken, hold_sqlite_file

    db = tmp_path / "runs.db"
    (tmp_path / "alias.db").symlink_to(db)
    held = hold_sqlite_file(f"sqlite:///{db}")
    try:
        with pytest.raises(SqliteFileTaken, match=str(db)):
            hold_sqlite_file(f"sqlite:///{tmp_path / 'alias.db'}")
    finally:
        held.close()


def test_a_home_relative_path_names_one_file(tmp_path, monkeypatch):
    """sqlite:///~/x.db: the checks, the lock and the message used ~ expanded, the engine the
    path as given, relative to the working directory, a directory named ~ and all."""
    home, elsewhere = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    (elsewhere / "~").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    out = run("keys create", "sqlite:///~/x.db", tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr.startswith(f"note: created a new database at {home / 'x.db'}")
    assert (home / "x.db").exists() and list((elsewhere / "~").iterdir()) == []
    listed = run("keys list", "sqlite:///~/x.db", tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "tenant t" in listed.stdout or " t " in listed.stdout


def test_a_database_directory_that_cannot_be_made_is_one_line(tmp_path):
    """A regular file where the database's directory should be: a traceback from mkdir."""
    (tmp_path / "afile").write_text("")
    for command in ("keys create", "import"):
        out = run(command, tmp_path / "afile" / "x.db", tmp_path)
        assert out.returncode == 2, out.stderr
        assert len(out.stderr.splitlines()) == 1 and out.stderr.startswith("error: --db: ")
        assert "Traceback" not in out.stderr


def test_serve_refused_for_a_newer_schema_leaves_no_lock_file(tmp_path):
    """The lock is taken before the store finds the schema too new: the refused start left a
    .serve-lock beside the database."""
    from benchmark_db.store import RunStore

    db = tmp_path / "data" / "runs.db"
    RunStore(f"sqlite:///{db}").close()
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE hparamrec_alembic_version SET version_num = '0099'")
    connection.close()
    before = files(db.parent)
    out = run("serve", db, tmp_path)
    assert out.returncode == 2, out.stderr
    assert "newer than this hparamrec's" in out.stderr.splitlines()[-1]
    assert files(db.parent) == before


def test_serve_on_all_interfaces_with_a_new_database_is_refused_before_making_it(tmp_path):
    """A new database has no API keys, so serving it beyond this machine is refused: it was
    refused after the database had been made and migrated."""
    db = tmp_path / "data" / "new.db"
    out = cli("serve", "--db", f"sqlite:///{db}", "--host", "0.0.0.0", "--port", "0",
              "--metrics-port", "off")
    assert out.returncode == 2
    assert out.stderr.splitlines()[-1].startswith(
        "error: refusing to listen on 0.0.0.0 with no API keys")
    assert not db.parent.exists()
