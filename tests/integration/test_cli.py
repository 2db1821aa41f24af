"""The installed `hparamrec` console script against a real server."""

import csv
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.factories import self_signed_pair

pytestmark = pytest.mark.integration
HPARAMREC = str(Path(sys.executable).parent / "hparamrec")


@pytest.fixture
def database_url(tmp_path):
    """The CLI's client commands do not depend on the database kind: SQLite only."""
    return f"sqlite:///{tmp_path / 'svc.db'}"


def cli(*args, server=None, env=None):
    argv = [HPARAMREC, *args] + (["--server", server] if server else [])
    return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "100", **(env or {})})


REPORT = ["report", "--params", "1.3B", "--tokens", "100B", "--lr", "1.2e-3",
          "--batch-size-tokens", "1M", "--weight-decay", "0.1", "--loss", "2.41",
          "--run-id", "my-run-7"]


def test_recommend_json_prints_recommendation_fields(target):
    out = cli("recommend", "--params", "1.3B", "--tokens", "100B", "--bits", "4", "--json",
              server=target)
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)
    for key in ("lr", "lr_interval", "batch_size_tokens", "batch_size_sequences", "weight_decay",
                "qat_fraction", "predicted_loss", "predicted_loss_interval", "sources",
                "warnings", "recommendation_id"):
        assert key in rec
    assert 0 < rec["qat_fraction"] < 1
    assert rec["spec"]["n_params"] == 1.3e9 and rec["spec"]["weight_bits"] == 4


def test_fewer_active_params_than_params_is_a_mixture_of_experts(target):
    moe = ["recommend", "--params", "8B", "--active-params", "1B", "--tokens", "200B"]
    out = cli(*moe, "--json", server=target)
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)
    assert rec["spec"]["architecture"] == "moe" and any(w.startswith("moe:") for w in rec["warnings"])
    out = cli(*moe, "--architecture", "dense", server=target)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "only a mixture of experts has" in out.stderr


def test_recommend_with_pinned_batch(target):
    out = cli("recommend", "--params", "1.3B", "--tokens", "100B", "--batch-size-tokens", "1M",
              "--json", server=target)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["batch_size_tokens"] == 1e6


def test_recommend_table(target):
    out = cli("recommend", "--params", "1B", "--tokens", "20B", server=target)
    assert out.returncode == 0, out.stderr
    assert "learning rate" in out.stdout and "steplaw_lr" in out.stdout
    assert "80% interval" in out.stdout and "predicted loss" in out.stdout
    why = [line for line in out.stdout.splitlines() if line.startswith("why: ")]
    assert why and "learning rate" in why[0] and "steplaw_lr" in why[0]
    assert "published laws only (prior@1)" in out.stdout
    assert "sources:" not in out.stdout


def test_recommend_explain_and_pins(target):
    out = cli("recommend", "--params", "1.3B", "--tokens", "100B", "--batch-size-tokens", "1M",
              "--explain", server=target)
    assert out.returncode == 0, out.stderr
    assert "pinned: batch size" in out.stdout
    assert "sources:" in out.stdout and "eta* = " in out.stdout  # the law's formula
    assert "model versions: prior@1" in out.stdout and "recommendation id: " in out.stdout


def test_why_names_the_learned_model_and_its_data(target, service):
    for i, lr in enumerate((5e-4, 1e-3, 2e-3, 4e-3)):  # four runs of an lr sweep
        report = REPORT[:-1] + [f"run-{i}"]
        report[report.index("--lr") + 1] = f"{lr:g}"
        out = cli(*report, server=target)
        assert out.returncode == 0, out.stderr
    assert sorted(r.hyperparameters.lr for r in service.store.all_runs("default")) == \
        [5e-4, 1e-3, 2e-3, 4e-3]  # a sweep, not one configuration four times
    # The refits the reports started run in the background: both answers below must come from
    # the last one's model.
    assert service.registry.wait_idle(60)
    out = cli("recommend", "--params", "1.3B", "--tokens", "100B", "--json", server=target)
    source = next(s for s in json.loads(out.stdout)["sources"] if s["field"] == "lr")
    assert source["name"] != "steplaw_lr", "no model learned from the runs"
    out = cli("recommend", "--params", "1.3B", "--tokens", "100B", server=target)
    why = next(line for line in out.stdout.splitlines() if line.startswith("why: "))
    assert f"from {source['name']}: {source['detail']}" in why  # e.g. "... fitted on 4 runs"


def test_report_then_list(target):
    first = cli(*REPORT, "--json", server=target)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["created"] is True
    again = cli(*REPORT, server=target)
    assert again.returncode == 0 and "already stored" in again.stdout
    assert again.stderr == ""  # a retry of the same report: nothing to warn of
    changed = list(REPORT)
    changed[changed.index("--loss") + 1] = "9.99"
    other = cli(*changed, server=target)  # a reused run_id: a script must not take it as stored
    assert other.returncode == 2 and other.stdout == ""
    assert other.stderr.startswith("error: run my-run-7 was stored before with other values "
                                   "(outcome.final_loss)")
    assert "this report was not stored" in other.stderr and other.stderr.count("\n") == 1
    empty_id = cli(*[("" if arg == "my-run-7" else arg) for arg in REPORT], server=target)
    assert empty_id.returncode == 2 and empty_id.stderr.startswith("error: --run-id: empty")
    listed = cli("runs", "list", "--json", server=target)
    runs = json.loads(listed.stdout)["runs"]
    assert [r["run_id"] for r in runs] == ["my-run-7"] and not json.loads(listed.stdout)["more"]
    second = cli(*[("my-run-8" if arg == "my-run-7" else arg) for arg in REPORT], server=target)
    assert second.returncode == 0, second.stderr
    cut = json.loads(cli("runs", "list", "--limit", "1", "--json", server=target).stdout)
    assert [r["run_id"] for r in cut["runs"]] == ["my-run-8"] and cut["more"]
    assert "older runs not shown" in cli("runs", "list", "--limit", "1", server=target).stdout
    assert runs[0]["hyperparameters"]["batch_size_tokens"] == 1e6
    shown = cli("runs", "show", "my-run-7", "--json", server=target)
    assert json.loads(shown.stdout)["outcome"]["final_loss"] == 2.41


def test_runs_list_limit(target):
    for i in range(3):
        assert cli(*REPORT[:-1], f"r{i}", server=target).returncode == 0
    listed = json.loads(cli("runs", "list", "--limit", "2", "--json", server=target).stdout)
    assert [r["run_id"] for r in listed["runs"]] == ["r2", "r1"]


def test_sizes_typed_as_they_print_get_the_stored_ones_as_a_hint(target):
    """Step Law's 429260800 params print as 429M, which matches no run typed back in."""
    report = ["--params", "429260800", "--tokens", "50B", *REPORT[REPORT.index("--lr"):]]
    assert cli("report", *report, server=target).returncode == 0
    out = cli("runs", "list", "--params", "429M", "--tokens", "50B", server=target)
    assert out.returncode == 0
    assert out.stdout == ("no stored runs of 429M params, 50B tokens; stored runs of 429M "
                          "params, 50B tokens have exactly --params 429260800 --tokens 50000000000\n")
    exact = cli("runs", "list", "--params", "429260800", "--tokens", "50000000000", "--json", server=target)
    assert len(json.loads(exact.stdout)["runs"]) == 1
    nothing = cli("runs", "list", "--params", "7B", "--tokens", "50B", server=target)
    assert nothing.stdout == "no stored runs of 7B params, 50B tokens\n"


@pytest.mark.parametrize("args, code, needle", [
    (["recommend", "--params", "-1", "--tokens", "100B"], 2, "spec.n_params"),
    (["recommend", "--params", "abc", "--tokens", "100B"], 2, "--params"),
    (["recommend", "--params", "1B", "--tokens", "1B", "--architecture", "rnn"], 2,
     "spec.architecture"),
    (["report", "--params", "1B", "--tokens", "1M", "--lr", "1e-3", "--batch-size-tokens", "2M",
      "--weight-decay", "0.1", "--loss", "2"], 2, "hyperparameters.batch_size_tokens"),
    (["report", "--params", "1B", "--tokens", "1B", "--lr", "1e-3", "--batch-size-tokens", "1M",
      "--weight-decay", "0.1"], 2, "--loss"),
    (["runs", "show", "nope"], 4, "nope"),
    (["runs", "show", ""], 2, "run_id: required"),
    (["recommend", "--params", "1.3B", "--tokens", "100B", "--seq-len", "99999999999"], 2,
     "spec.seq_len: out of range"),
    (["runs", "list", "--params", "1.3B", "--tokens", "100B", "--bits", "99999999999"], 2,
     "spec.weight_bits: out of range"),
    (["recommend", "--frobnicate"], 2, "--frobnicate"),
])
def test_errors_are_one_line_with_meaningful_exit_codes(target, args, code, needle):
    out = cli(*args, server=target)
    assert out.returncode == code
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert out.stdout == ""


BIG = "x" * 110_000  # ten of these make a report over the server's 1 MB message limit


@pytest.mark.parametrize("meta, needle", [
    (["k=v", "k=w"], "--meta: key k given twice"),
    ([f"k{i}=v" for i in range(65)], "metadata: at most 64 entries"),
    ([f"k{i}={BIG}" for i in range(10)], "metadata['k0']: value over 4096 bytes"),
    ([f"{'k' * 257}=v"], "metadata: key must be 1-256 bytes"),
    (["=v"], "metadata: key must be 1-256 bytes"),
])
def test_report_metadata_is_checked_before_the_call(meta, needle):
    """Nothing listens on the server given (exit 3 if called): a repeated key was silently
    overwritten, and a report over the message limit was refused naming no field."""
    args = [arg for item in meta for arg in ("--meta", item)]
    out = cli(*REPORT, *args, server="127.0.0.1:1")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [f"error: {needle}"]


def test_unreachable_server_exits_3():
    out = cli("recommend", "--params", "1B", "--tokens", "20B", server="127.0.0.1:1")
    assert out.returncode == 3
    assert out.stderr.count("\n") == 1 and "cannot reach" in out.stderr


def test_a_tls_client_of_a_plaintext_server_is_told_in_one_line(target, tmp_path):
    """gRPC's C core printed two lines of its own about the failed handshake first."""
    cert, _ = self_signed_pair(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}  # as a user's shell
    out = subprocess.run([HPARAMREC, "runs", "list", "--server", target, "--tls-ca", str(cert)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 3
    assert out.stderr.count("\n") == 1 and "does not seem to serve TLS" in out.stderr


@pytest.mark.parametrize("args, env, needle", [
    (["--tls-ca", "/nonexistent.pem"], {}, "--tls-ca: cannot read /nonexistent.pem: "),
    ([], {"HPARAMREC_TLS_CA": "/nonexistent.pem"},
     "HPARAMREC_TLS_CA (for --tls-ca): cannot read /nonexistent.pem: "),
    (["--tls-ca", __file__], {}, f"--tls-ca: {__file__} holds no PEM certificate"),
    (["--server", "127.0.0.1:99999"], {}, "--server: the port must be a number from 1 to 65535"),
    (["--server", "127.0.0.1"], {}, "--server: expected HOST:PORT, with the port"),
    ([], {"HPARAMREC_SERVER": "127.0.0.1"},  # the variable is named, not a flag never given
     "HPARAMREC_SERVER (for --server): expected HOST:PORT, with the port"),
    (["--api-key", "hpr_a b"], {}, "--api-key: only printable ASCII without spaces can be a key"),
    ([], {"HPARAMREC_API_KEY": "hpr_\u00e9"},
     "HPARAMREC_API_KEY (for --api-key): only printable ASCII without spaces"),
])
def test_unusable_client_settings_are_one_line_and_exit_2(args, env, needle):
    if "--server" not in args and "HPARAMREC_SERVER" not in env:
        args = [*args, "--server", "127.0.0.1:1"]  # nothing listens there: exit 3 if called
    out = cli("runs", "list", *args, env=env)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: " + needle)


def test_grpc_target_forms_still_reach_the_server(target):
    port = target.rsplit(":", 1)[1]
    for server in (f"localhost:{port}", f"dns:///127.0.0.1:{port}", f"ipv4:127.0.0.1:{port}"):
        out = cli("runs", "list", "--json", server=server)
        assert out.returncode == 0 and json.loads(out.stdout) == {"runs": [], "more": False}, (server, out.stderr)


def test_piped_tables_keep_source_names_whole(target):
    """A pipe has no width; at Rich's 80 columns `power_lines_timescale` broke mid-word."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = subprocess.run([HPARAMREC, "recommend", "--params", "1.3B", "--tokens", "100B",
                          "--bits", "4", "--server", target], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "power_lines_timescale" in out.stdout and "dremov_qat_fraction" in out.stdout


def test_version():
    from importlib.metadata import version

    out = subprocess.run([HPARAMREC, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == f"hparamrec {version('hparamrec')}\n"


def test_a_diverged_run_may_report_the_last_loss_it_reached(target):
    base = ["report", "--params", "1B", "--tokens", "20B", "--lr", "2e-2", "--batch-size-tokens",
            "1M", "--weight-decay", "0.1"]
    out = cli(*base, "--diverged", "--loss", "7.5", "--run-id", "blew-up", "--json", server=target)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["run"]["outcome"] == {"status": "RUN_STATUS_DIVERGED",
                                                          "final_loss": 7.5}
    both = cli(*base, "--failed", "--loss", "7.5", server=target)
    assert both.returncode == 2 and both.stderr.startswith("error: give exactly one of --loss")


def test_runs_export_reimports_cleanly(target, tmp_path):
    runs = [REPORT[:-1] + ["a"] + ["--meta", "cluster=a100", "--meta", "team=x"],
            ["report", "--params", "8B", "--active-params", "1B", "--tokens", "200B",
             "--architecture", "moe", "--seq-len", "4096", "--lr", "1.5e-3", "--batch-size-tokens",
             "4Mi", "--weight-decay", "0", "--diverged", "--run-id", "b", "--recommendation-id",
             "rec-1"],
            ["report", "--params", "1B", "--tokens", "50B", "--bits", "4", "--lr", "1e-3",
             "--batch-size-tokens", "2M", "--weight-decay", "0.1", "--qat-fraction", "0.3",
             "--failed", "--run-id", "c", "--meta", "cluster=h100"]]
    for args in runs:
        assert cli(*args, server=target).returncode == 0
    from tests.integration.in_process_server import QUICK_REFITS, running_service

    for file_format in ("csv", "jsonl"):
        exported = tmp_path / f"runs.{file_format}"
        out = cli("runs", "export", "--format", file_format, "--out", str(exported), "--json",
                  server=target)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"runs": 3, "format": file_format, "out": str(exported)}
        url = f"sqlite:///{tmp_path / (file_format + '.db')}"
        imported = cli("import", "--db", url, "--format", file_format, "--json", str(exported))
        assert imported.returncode == 0, imported.stderr
        assert json.loads(imported.stdout) == {"read": 3, "added": 3, "already_stored": 0,
                                               "diverged": 1, "conflicting": []}
        with running_service(url, grace=0, refit_debounce_seconds=QUICK_REFITS) as svc:
            again = cli("runs", "export", "--format", file_format, server=f"127.0.0.1:{svc.port}")
            original = cli("runs", "list", "--json", server=target)
            copied = cli("runs", "list", "--json", server=f"127.0.0.1:{svc.port}")
        assert again.stdout == exported.read_text()

        def comparable(listing):
            return [{k: v for k, v in run.items() if k not in ("source", "created_at")}
                    for run in json.loads(listing.stdout)["runs"]]

        assert comparable(copied) == comparable(original)
    rows = list(csv.DictReader((tmp_path / "runs.csv").open()))
    assert [r["run_id"] for r in rows] == ["a", "b", "c"]  # oldest first
    assert rows[0]["metadata.cluster"] == "a100" and rows[1]["metadata.cluster"] == ""


def test_runs_export_to_stdout_and_json_needs_out(target):
    assert cli(*REPORT, server=target).returncode == 0
    out = cli("runs", "export", server=target)
    assert out.returncode == 0 and json.loads(out.stdout)["run_id"] == "my-run-7"
    out = cli("runs", "export", "--json", server=target)
    assert out.returncode == 2 and "--json needs --out" in out.stderr


def test_plot_writes_a_png_with_the_runs_of_the_spec_marked(target, tmp_path):
    assert cli(*REPORT, server=target).returncode == 0
    other = ["report", "--params", "7B", "--tokens", "1T", "--lr", "1e-3", "--batch-size-tokens",
             "4M", "--weight-decay", "0.1", "--loss", "2.0", "--run-id", "other-spec"]
    assert cli(*other, server=target).returncode == 0
    path = tmp_path / "landscape.png"
    out = cli("plot", "--params", "1.3B", "--tokens", "100B", "--out", str(path), "--grid", "9",
              "--json", server=target)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["runs"] == 1 and summary["grid"] == [9, 9]
    assert summary["recommendation"]["spec"]["n_params"] == 1.3e9
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_plot_counts_the_runs_it_draws_and_the_failed_ones_it_does_not(target, tmp_path):
    """It draws completed and diverged runs; failed ones were counted as marked too."""
    run = ["report", "--params", "1.3B", "--tokens", "100B", "--lr", "1.2e-3",
           "--batch-size-tokens", "1M", "--weight-decay", "0.1"]
    for run_id, outcome in (("done", "--loss=2.41"), ("blew-up", "--diverged"),
                            ("crashed", "--failed")):
        assert cli(*run, outcome, "--run-id", run_id, server=target).returncode == 0
    plot = ["plot", "--params", "1.3B", "--tokens", "100B", "--out", str(tmp_path / "l.png"),
            "--grid", "5"]
    out = cli(*plot, server=target)
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith(", 2 stored runs of this spec marked (1 failed not drawn)\n")
    summary = json.loads(cli(*plot, "--json", server=target).stdout)
    assert (summary["runs"], summary["failed"]) == (3, 1)


@pytest.mark.parametrize("args, needle", [
    (["runs", "export", "--out", "/nonexistent/d/f.csv"], "--out: no such directory: /nonexistent/d"),
    (["plot", "--params", "1.3B", "--tokens", "100B", "--out", "/nonexistent/l.png"],
     "--out: no such directory: /nonexistent"),
    (["plot", "--study", "--params", "1.3B", "--tokens", "100B", "--out", "/nonexistent/l.png"],
     "--out: no such directory: /nonexistent"),
    (["plot", "--params", "1.3B", "--tokens", "100B", "--out", "l.txt"],
     "--out: unsupported image format 'txt': use one of "),
    (["plot", "--study", "--params", "1.3B", "--tokens", "100B", "--out", "s.foo"],
     "--out: unsupported image format 'foo': use one of "),
])
def test_a_bad_out_is_refused_before_calling_the_server(args, needle):
    out = cli(*args, server="127.0.0.1:1")  # nothing listens there: exit 3 if it were called
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: " + needle)
    if "format" in needle:
        assert "png" in lines[0] and "svg" in lines[0] and "pdf" in lines[0]


def test_plot_without_an_extension_says_the_file_it_wrote(target, tmp_path):
    out = cli("plot", "--params", "1.3B", "--tokens", "100B", "--out", str(tmp_path / "l"),
              "--grid", "5", server=target)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"wrote {tmp_path / 'l.png'}: ")
    assert (tmp_path / "l.png").read_bytes()[:4] == b"\x89PNG"


def test_no_subcommand_prints_the_help_without_an_error_prefix():
    out = cli()
    assert out.returncode == 2  # click's convention for a group called with no arguments
    assert out.stderr.startswith("Usage: hparamrec [OPTIONS] COMMAND") and "error:" not in out.stderr
    assert "recommend" in out.stderr and out.stdout == ""


def test_shell_completion_scripts():
    for shell, needle in (("bash", "complete -o nosort -F _hparamrec_completion hparamrec"),
                          ("zsh", "#compdef hparamrec"), ("fish", "complete --no-files --command hparamrec")):
        out = cli(env={"_HPARAMREC_COMPLETE": f"{shell}_source"})
        assert out.returncode == 0 and needle in out.stdout, (shell, out.stdout[:200])
    out = cli(env={"_HPARAMREC_COMPLETE": "bash_complete", "COMP_WORDS": "hparamrec runs ex",
                   "COMP_CWORD": "2"})
    assert out.stdout.strip() == "plain,export"


def test_every_command_takes_json():
    import click

    from clients.cli import app

    def leaves(group, prefix=()):
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from leaves(command, prefix + (name,))
            else:
                yield prefix + (name,), command

    without = [" ".join(path) for path, command in leaves(app)
               if "--json" not in {o for p in command.params for o in p.opts}]
    assert without == ["serve"]  # it runs until stopped; --log-format json for its logs


def test_heartbeat_keeps_a_trial_alive_and_says_when_it_has_finished(target):
    explore = cli("recommend", "--params", "1.3B", "--tokens", "100B", "--mode", "explore",
                  "--json", server=target)
    trial_id = json.loads(explore.stdout)["trial_id"]
    out = cli("heartbeat", "--trial-id", trial_id, server=target)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"trial {trial_id} running: heartbeat recorded; times out at ")
    assert out.stdout.count("\n") == 1
    beat = json.loads(cli("heartbeat", "--trial-id", trial_id, "--json", server=target).stdout)
    assert beat["state"] == "TRIAL_STATE_RUNNING" and beat["expires_at"] > beat["heartbeat_at"]
    beat = json.loads(cli("heartbeat", "--trial-id", trial_id, "--interval-seconds", "600",
                          "--json", server=target).stdout)  # given up after 3 missed
    assert beat["expires_at"][:16] == (datetime.fromisoformat(beat["heartbeat_at"])
                                       + timedelta(seconds=1800)).isoformat()[:16]
    out = cli("heartbeat", "--trial-id", trial_id, "--interval-seconds", "-1", server=target)
    assert out.returncode == 2 and "--interval-seconds" in out.stderr
    rec = json.loads(explore.stdout)
    reported = cli("report", "--params", "1.3B", "--tokens", "100B", "--lr", str(rec["lr"]),
                   "--batch-size-tokens", str(rec["batch_size_tokens"]), "--weight-decay",
                   str(rec["weight_decay"]), "--loss", "2.4", "--run-id", "beaten",
                   "--trial-id", trial_id, server=target)
    assert reported.returncode == 0, reported.stderr
    out = cli("heartbeat", "--trial-id", trial_id, server=target)
    assert out.returncode == 1 and out.stdout == f"trial {trial_id} reported: the trial was " \
                                                 "closed by run 'beaten' (complete)\n"
    out = cli("heartbeat", "--trial-id", "999-0", server=target)
    assert out.returncode == 2 and out.stderr.startswith("error: trial_id: no trial '999-0'")


def test_a_service_that_never_answers_is_named_in_the_deadline_error():
    import socket

    from clients.client import Client
    from clients.errors import DeadlineExceededError

    with socket.socket() as silent:  # accepts connections, never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        with Client(target, timeout=0.5, retries=0) as c, pytest.raises(DeadlineExceededError) as caught:
            c.get_run("x")
    assert str(caught.value) == f"the service at {target} did not answer within the deadline (0.5 s)"
    assert caught.value.exit_code == 3


def test_a_missing_choice_option_is_one_line(tmp_path):
    """click lists the choices one a line; the CLI's errors are one line."""
    runs = tmp_path / "runs.csv"
    runs.write_text("")
    out = cli("import", "--db", f"sqlite:///{tmp_path / 'x.db'}", str(runs))
    assert out.returncode == 2
    assert out.stderr == "error: Missing option '--format'. Choose from: steplaw, csv, jsonl\n"
