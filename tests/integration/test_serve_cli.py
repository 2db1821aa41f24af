"""`hparamrec serve` as a real process, and the key-management commands."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clients.client import Client, spec
from clients.errors import UnauthenticatedError
from tests.factories import self_signed_pair

pytestmark = pytest.mark.integration
HPARAMREC = str(Path(sys.executable).parent / "hparamrec")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(target: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with Client(target, retries=0, timeout=1) as c:
                if c.health() == "SERVING":
                    return
        except Exception:
            time.sleep(0.05)
    raise TimeoutError(f"no server on {target}:\n{log.read_text()}")


def start(db: str, log: Path, *flags: str,
          env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`hparamrec serve`, its output (logs on stderr) to the file `log`: a pipe nobody reads
    could fill and stall the server."""
    port = free_port()
    with open(log, "a") as out:
        process = subprocess.Popen([HPARAMREC, "serve", "--db", db, "--port", str(port),
                                    "--metrics-port", "0", *flags],
                                   stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    target = f"127.0.0.1:{port}"
    try:
        wait_serving(target, process, log)
    except Exception:
        process.kill()
        process.wait(timeout=30)
        raise
    return process, target


def terminate(process: subprocess.Popen, timeout: float = 60) -> int:
    """SIGTERM, then wait for the drain; the exit code."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
        raise


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HPARAMREC, *args], capture_output=True, text=True, timeout=60)


def test_serve_no_auth_answers_and_drains_on_sigterm(tmp_path):
    log = tmp_path / "serve.log"
    process, target = start(f"sqlite:///{tmp_path / 's.db'}", log, "--no-auth")
    try:
        out = cli("recommend", "--params", "1B", "--tokens", "20B", "--json", "--server", target)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["lr"] > 0
    finally:
        code = terminate(process)
    assert code == 0, log.read_text()
    assert "draining" in log.read_text()


def test_a_sigterm_as_soon_as_the_server_says_serving_drains_it(tmp_path):
    """The signal handlers went in only after start-up ended (gc.freeze(), the "listening"
    line): a SIGTERM sent on the first SERVING could kill the server undrained."""
    log = tmp_path / "serve.log"
    process, _ = start(f"sqlite:///{tmp_path / 's.db'}", log, "--no-auth")
    code = terminate(process)  # at once
    assert code == 0, log.read_text()
    messages = [json.loads(line)["msg"] for line in log.read_text().splitlines()
                if line.startswith("{")]
    assert any(m.startswith("shutting down: draining") for m in messages), messages
    assert any(m.startswith("stopped in ") for m in messages), messages


def test_keys_lifecycle_through_the_cli(tmp_path):
    db = f"sqlite:///{tmp_path / 'k.db'}"
    created = cli("keys", "create", "--db", db, "--tenant", "team-a", "--label", "ci", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    key_id = json.loads(created.stdout)["key_id"]
    process, target = start(db, tmp_path / "serve.log")
    try:
        ok = cli("runs", "list", "--json", "--server", target, "--api-key", key)
        assert ok.returncode == 0 and json.loads(ok.stdout) == {"runs": [], "more": False}
        denied = cli("runs", "list", "--server", target)
        assert denied.returncode == 5 and "missing API key" in denied.stderr
        listed = json.loads(cli("keys", "list", "--db", db, "--json").stdout)["keys"]
        assert [(k["key_id"], k["tenant"], k["revoked_at"]) for k in listed] == [(key_id, "team-a", None)]
        assert key not in json.dumps(listed)
        revoked = cli("keys", "revoke", "--db", db, key_id)
        assert revoked.returncode == 0 and revoked.stdout == f"revoked {key_id} (tenant team-a)\n"
        again = cli("keys", "revoke", "--db", db, key_id)
        assert again.returncode == 0 and f"revoked {key_id} (tenant team-a) already, at " in again.stdout
        with Client(target, api_key=key, retries=0) as client:
            with pytest.raises(UnauthenticatedError):
                client.recommend(spec(n_params=1e9, n_tokens=2e10))
    finally:
        terminate(process)


def test_an_import_into_a_tenant_no_key_reads_says_so(tmp_path):
    """Keys are in use and --tenant was forgotten: the runs went to `default`, which only
    servers without authentication read."""
    db = f"sqlite:///{tmp_path / 'k.db'}"
    runs = tmp_path / "runs.jsonl"
    runs.write_text(json.dumps({"n_params": 1e9, "n_tokens": 2e10, "lr": 1e-3,
                                "batch_size_tokens": 1048576, "weight_decay": 0.1,
                                "final_loss": 2.5}) + "\n")
    quiet = cli("import", "--db", db, "--format", "jsonl", str(runs))
    assert quiet.returncode == 0 and "no active API key" not in quiet.stderr  # no keys in use
    assert cli("keys", "create", "--db", db, "--tenant", "team-a").returncode == 0
    forgot = cli("import", "--db", db, "--format", "jsonl", str(runs))
    assert forgot.returncode == 0
    assert "note: the runs are in tenant default, which no active API key reads" in forgot.stderr
    meant = cli("import", "--db", db, "--format", "jsonl", "--tenant", "team-a", str(runs))
    assert meant.returncode == 0 and "no active API key" not in meant.stderr


def test_keys_revoke_unknown_id_exits_4(tmp_path):
    db = f"sqlite:///{tmp_path / 'k.db'}"
    assert cli("keys", "create", "--db", db, "--tenant", "t").returncode == 0
    out = cli("keys", "revoke", "--db", db, "nope")
    assert out.returncode == 4 and out.stderr.startswith("error: ")


@pytest.mark.parametrize("command", [["list"], ["revoke", "abc123"]])
def test_keys_on_a_missing_sqlite_file_exit_2_and_create_nothing(tmp_path, command):
    """A typo in --db must not answer from (or leave behind) a new empty database."""
    path = tmp_path / "typo" / "path.db"
    out = cli("keys", *command, "--db", f"sqlite:///{path}")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [f"error: --db: no database at {path}"]
    assert not path.parent.exists()


def test_serve_refuses_a_public_address_without_keys(tmp_path):
    out = subprocess.run([HPARAMREC, "serve", "--db", f"sqlite:///{tmp_path / 'p.db'}",
                          "--host", "0.0.0.0", "--port", "0", "--metrics-port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "refusing to listen" in out.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("value", ["-5", "1e300"])
def test_serve_refuses_a_trial_time_out_out_of_range_in_one_line(tmp_path, value):
    """Beyond 100 years a trial's deadline is no date: refused at start-up, not on every
    explore."""
    out = subprocess.run([HPARAMREC, "serve", "--db", f"sqlite:///{tmp_path / 'p.db'}",
                          "--port", "0", "--metrics-port", "0", "--no-auth"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HPARAMREC_TRIAL_TIMEOUT_SECONDS": value})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert out.stderr.startswith("error: HPARAMREC_TRIAL_TIMEOUT_SECONDS: ")


@pytest.mark.parametrize("flags, env, needle", [
    (["--predictor", "bogus"], {}, "error: --predictor (or HPARAMREC_PREDICTOR): unknown "
                                   "predictor 'bogus'; choose from prior, "),
    ([], {"HPARAMREC_PREDICTOR": "bogus"}, "error: --predictor (or HPARAMREC_PREDICTOR): unknown"),
    ([], {"HPARAMREC_PORT": "abc"}, "error: --port (or HPARAMREC_PORT): Input should be"),
    # Half a TLS pair, even without authentication, is an error, not a plaintext server.
    (["--tls-key", "server.key"], {}, "error: --tls-key (or HPARAMREC_TLS_KEY_FILE): is set "
                                      "without the certificate, --tls-cert"),
    (["--tls-cert", "server.crt"], {}, "error: --tls-key (or HPARAMREC_TLS_KEY_FILE): is required "
                                       "with --tls-cert"),
    # Told at start, naming the flag: it was "[Errno 2] No such file or directory", after the
    # database had been opened.
    (["--tls-cert", "missing.crt", "--tls-key", "server.key"], {},
     "error: --tls-cert (or HPARAMREC_TLS_CERT_FILE): cannot read missing.crt: No such file"),
    (["--tls-cert", "server.crt", "--tls-key", "missing.key"], {},
     "error: --tls-key (or HPARAMREC_TLS_KEY_FILE): cannot read missing.key: No such file"),
    # gRPC failed to bind with these, and the server said the port was in use.
    (["--tls-cert", "junk.pem", "--tls-key", "server.key"], {},
     "error: --tls-cert (or HPARAMREC_TLS_CERT_FILE): junk.pem is not a PEM certificate"),
    (["--tls-cert", "server.crt", "--tls-key", "other.key"], {},
     "error: --tls-key (or HPARAMREC_TLS_KEY_FILE): cannot use other.key: it does not match the "
     "certificate --tls-cert"),
    (["--tls-cert", "server.crt", "--tls-key", "server.crt"], {},
     "error: --tls-key (or HPARAMREC_TLS_KEY_FILE): cannot use server.crt: not an unencrypted PEM "
     "private key"),
    # inf killed the poll thread (OverflowError) while the server went on without it.
    ([], {"HPARAMREC_REFIT_POLL_SECONDS": "inf"},
     "error: HPARAMREC_REFIT_POLL_SECONDS: Input should be a finite number"),
    ([], {"HPARAMREC_GRACE_SECONDS": "1e300"}, "error: HPARAMREC_GRACE_SECONDS: Input should be "
                                               "less than or equal to"),
    (["--metrics-port", "abc"], {}, "error: --metrics-port (or HPARAMREC_METRICS_PORT): "),
])
def test_a_bad_setting_is_named_by_its_flag_and_variable_before_the_database_is_made(
        tmp_path, flags, env, needle):
    self_signed_pair(tmp_path)  # server.crt and .key: half a pair is the point, not a bad file
    self_signed_pair(tmp_path, "other")
    (tmp_path / "junk.pem").write_text("PEM")
    out = subprocess.run([HPARAMREC, "serve", "--db", f"sqlite:///{tmp_path / 'p.db'}",
                          "--metrics-port", "0", "--no-auth", *flags],
                         capture_output=True, text=True, timeout=60, env={**os.environ, **env},
                         cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert out.stderr.startswith(needle)
    assert not (tmp_path / "p.db").exists()


def test_serve_names_the_metrics_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([HPARAMREC, "serve", "--db", f"sqlite:///{tmp_path / 'p.db'}",
                              "--port", "0", "--metrics-port", str(port), "--no-auth"],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr == (  # told before the database is made
        f"error: cannot serve metrics on 127.0.0.1:{port} (--metrics-host, --metrics-port; "
        "HPARAMREC_METRICS_HOST, HPARAMREC_METRICS_PORT): the port is in use\n")
    assert not (tmp_path / "p.db").exists()


def test_serve_refuses_a_port_already_in_use(tmp_path):
    """gRPC would otherwise share the port (SO_REUSEPORT): two servers on two databases, each
    call answered by either."""
    process, target = start(f"sqlite:///{tmp_path / 'first.db'}", tmp_path / "first.log",
                            "--no-auth")
    try:
        port = target.rsplit(":", 1)[1]
        out = subprocess.run([HPARAMREC, "serve", "--db", f"sqlite:///{tmp_path / 'second.db'}",
                              "--port", port, "--metrics-port", "0", "--no-auth"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2
        # One line, before the database is made: it came after the new database's logs and
        # gRPC's own "E... add_port.cc ... Failed to add port".
        assert out.stderr == f"error: cannot listen on 127.0.0.1:{port}: the port is in use\n"
        assert not (tmp_path / "second.db").exists()
    finally:
        terminate(process)


@pytest.mark.parametrize("flags, code, needle", [
    (["--db", "bogus://x"], 2, "error: --db (or HPARAMREC_DATABASE_URL): bogus is not supported"),
    (["--db", "mysql://u@h/db"], 2, "error: --db (or HPARAMREC_DATABASE_URL): mysql is not "
                                    "supported: give a sqlite:///PATH or postgresql://... URL"),
    (["--db", "sqlite:////proc/x.db"], 3, "error: cannot open the database: "),
    (["--db", "postgresql://u:p@127.0.0.1:1/db"], 3, "error: cannot open the database: "),
    (["--host", "999.1.1.1", "--no-auth"], 2, "error: cannot listen on 999.1.1.1:0: the host is "
                                              "not an address of this machine"),
    (["--host", "192.0.2.1", "--no-auth"], 2, "error: cannot listen on 192.0.2.1:0: the host is "
                                              "not an address of this machine"),
])
def test_serve_with_a_bad_database_or_host_fails_in_one_line(tmp_path, flags, code, needle):
    db = [] if "--db" in flags else ["--db", f"sqlite:///{tmp_path / 's.db'}"]
    out = cli("serve", *db, *flags, "--port", "0", "--metrics-port", "0")
    assert out.returncode == code, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith(needle) and "Traceback" not in out.stderr
    # The rest are logs: the server's (JSON) and gRPC's own ("E1125 ... add_port.cc ...").
    assert all(line.startswith("{") or line[:1] in "EWI" and line[1:5].isdigit()
               for line in lines[:-1])


@pytest.mark.parametrize("label", ["x" * 201, "cluster-a\nrevoked", "tab\there"])
def test_keys_create_refuses_a_long_or_multiline_label(tmp_path, label):
    """keys list prints one line per key: a label may not break it (nor be 100 kB)."""
    from benchmark_db.errors import InvalidArgument
    from benchmark_db.store import RunStore

    db = f"sqlite:///{tmp_path / 'k.db'}"
    out = cli("keys", "create", "--db", db, "--tenant", "t", "--label", label)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.splitlines()) == 1 and out.stderr.startswith("error: --label: ")
    store = RunStore(db)  # the rule is the store's, for any caller
    try:
        with pytest.raises(InvalidArgument, match="label"):
            store.keys.create("t", label)
        assert store.keys.list() == []
        assert store.keys.create("t", "é" * 200)[1].label == "é" * 200
    finally:
        store.close()


def test_metrics_can_listen_on_another_address_than_the_calls(tmp_path):
    """A replica serving calls on all interfaces keeps its metrics, which name tenants, on a
    private address."""
    import http.client
    import urllib.error
    import urllib.request

    from tests.integration.in_process_server import running_service

    with running_service(f"sqlite:///{tmp_path / 'm.db'}", host="127.0.0.1",
                         metrics_port=0, metrics_host="127.0.0.2") as svc:
        assert svc.metrics_host == "127.0.0.2"
        text = urllib.request.urlopen(f"http://127.0.0.2:{svc.metrics_port}/metrics",
                                      timeout=5).read().decode()
        assert "hparamrec_refits_pending" in text
        # Not on 127.0.0.1. Another listener may hold that port number there (the calls' own,
        # both picked by the kernel): whatever answers, it is not the metrics.
        try:
            other = urllib.request.urlopen(f"http://127.0.0.1:{svc.metrics_port}/metrics",
                                           timeout=5).read().decode(errors="replace")
        except (urllib.error.URLError, OSError, http.client.HTTPException):
            other = ""
        assert "hparamrec_refits_pending" not in other


def test_serve_warns_of_a_misspelt_variable_switches_metrics_off_and_survives_sighup(tmp_path):
    """A misspelt HPARAMREC_* variable left its setting at the default without a word; there
    was no way to switch the metrics port off; SIGHUP (sent for a reload) killed the server
    at once, without draining."""
    log = tmp_path / "serve.log"
    process, target = start(f"sqlite:///{tmp_path / 's.db'}", log, "--no-auth",
                            "--metrics-port", "off", env={"HPARAMREC_REFIT_POLL_SECOND": "1"})

    def messages() -> list[str]:
        return [json.loads(line)["msg"] for line in log.read_text().splitlines()
                if line.startswith("{")]

    try:
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while not any(m.startswith("SIGHUP ignored") for m in messages()):  # it was handled
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        with Client(target, retries=0) as client:
            assert client.health() == "SERVING"
        assert process.poll() is None
    finally:
        code = terminate(process)
    assert code == 0, log.read_text()
    logs = messages()
    assert ("HPARAMREC_REFIT_POLL_SECOND is not a setting, and is ignored (did you mean "
            "HPARAMREC_REFIT_POLL_SECONDS?)") in logs
    assert any(m.startswith("SIGHUP ignored: settings are read at start only") for m in logs)
    assert any("(metrics on no port)" in m for m in logs)


def test_a_second_server_on_one_sqlite_file_is_refused(tmp_path):
    """Each would lock the studies in-process only: one explore trial handed to two launchers."""
    process, _ = start(f"sqlite:///{tmp_path / 'one.db'}", tmp_path / "one.log", "--no-auth")
    try:
        out = cli("serve", "--db", f"sqlite:///{tmp_path / 'one.db'}", "--port", "0",
                  "--metrics-port", "off", "--no-auth")
        assert out.returncode == 2
        assert out.stderr.strip().splitlines()[-1] == (
            f"error: --db: another hparamrec server (pid {process.pid}) serves "
            f"{tmp_path / 'one.db'}; a SQLite database takes one server (several replicas "
            "need PostgreSQL)")
    finally:
        terminate(process)
    again, _ = start(f"sqlite:///{tmp_path / 'one.db'}", tmp_path / "again.log",  # released at exit
                     "--no-auth")
    assert terminate(again) == 0


def test_a_bad_setting_is_told_before_the_server_packages_load(tmp_path):
    """The server's modules take over a second to import; a mistyped flag need not wait."""
    script = ("import sys; sys.modules['service.server'] = None; from clients.cli import main; "
              "sys.exit(main(['serve', '--port', '99999']))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error: --port (or HPARAMREC_PORT): Input should be less than")
