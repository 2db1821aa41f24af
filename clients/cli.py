"""The `hparamrec` command line.

Errors end in one line on stderr and a meaningful exit code: 2 bad input, 3 service
unreachable, 4 not found, 5 not authorised, 1 anything else. With --json a command prints one
JSON object whose keys are the proto field names.
"""

import math
import os
import shlex
import sys
from pathlib import Path

# gRPC's C core writes log lines of its own to stderr (two for a failed TLS handshake, before the
# CLI's one-line error). Client commands silence it; `serve` keeps gRPC's default, for operators.
# gRPC reads it as it loads, hence here, before any import of it; the user's own setting wins.
if sys.argv[1:2] != ["serve"]:
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import click  # noqa: E402

from clients.cli_admin import backtest, import_runs, keys
from clients.cli_options import (QUANTITY, CliError, check_out, client_options, given_run_id,
                                 database_errors, json_option, metadata_of, pin_options, pins_of,
                                 print_json, spec_filter_of, spec_of, spec_options, to_dict)
from clients.errors import HparamrecError, InvalidArgumentError

# click >= 8.2 raises it for a group called with no arguments (older versions print the help).
NoArgsIsHelp = getattr(click.exceptions, "NoArgsIsHelpError", ())


@click.group(help="Hyperparameter recommendations for language-model pretraining.")
@click.version_option(package_name="hparamrec", message="%(prog)s %(version)s")
def app() -> None:
    pass


@app.command()
@click.option("--db", help="SQLAlchemy URL of the store (default: HPARAMREC_DATABASE_URL or "
                           "sqlite:///var/hparamrec.db).")
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 50051; 0 picks a free one).")
@click.option("--no-auth", is_flag=True, default=None,
              help="Switch authentication off (local development): every caller is one tenant.")
@click.option("--metrics-port", help="Prometheus metrics port (default 9464; 0 picks a free "
                                     "one; off: no metrics).")
@click.option("--metrics-host", help="Address of the metrics port (default: --host's).")
@click.option("--tls-cert", help="PEM server certificate: serve TLS (with --tls-key).")
@click.option("--tls-key", help="PEM private key of --tls-cert.")
@click.option("--predictor", help="Learned model once runs exist (default auto).")
@click.option("--log-format", type=click.Choice(["json", "text"]), help="Log lines (default json).")
def serve(db, host, port, no_auth, metrics_port, metrics_host, tls_cert, tls_key, predictor,
          log_format) -> None:
    """Run the service until SIGTERM/SIGINT (flags override HPARAMREC_* variables)."""
    # Server-side packages load only here, so the client commands start fast; the server's own
    # (about 1.5 s) only once the settings are valid, so a mistyped flag is told at once.
    from pydantic import ValidationError

    from service.settings import Settings

    flags = {"database_url": db, "host": host, "port": port, "auth_disabled": no_auth,
             "metrics_port": metrics_port, "metrics_host": metrics_host,
             "tls_cert_file": tls_cert, "tls_key_file": tls_key,
             "predictor": predictor, "log_format": log_format}
    try:
        settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        reason = first["msg"].removeprefix("Value error, ")  # pydantic's prefix to our own
        raise CliError(f"{_setting_source(field)}: {reason}") from None
    from service.observability import configure_logging
    from service.server import ConfigurationError
    from service.server import serve as run_server

    configure_logging(settings.log_format)
    try:
        with database_errors():  # the store is opened as the server is built
            run_server(settings)
    except (ConfigurationError, ValueError, OSError) as exc:  # OSError: cannot listen
        raise CliError(str(exc), 2) from None


# serve's flags by the setting they set; the others come only from HPARAMREC_* variables.
SERVE_FLAGS = {"database_url": "--db", "host": "--host", "port": "--port",
               "auth_disabled": "--no-auth", "metrics_port": "--metrics-port",
               "metrics_host": "--metrics-host",
               "tls_cert_file": "--tls-cert", "tls_key_file": "--tls-key",
               "predictor": "--predictor", "log_format": "--log-format"}


def _setting_source(field: str) -> str:
    """Where a setting comes from, for its error: the flag and the variable."""
    variable = f"HPARAMREC_{field.upper()}"
    return f"{SERVE_FLAGS[field]} (or {variable})" if field in SERVE_FLAGS else variable


@app.command()
@spec_options
@pin_options
@click.option("--explain", is_flag=True,
              help="Also print every source's formula or fit, versions and the resolved spec.")
@click.option("--mode", type=click.Choice(["exploit", "explore"]), default="exploit",
              show_default=True, help="exploit: the best predicted configuration; explore: the "
              "next trial of the spec's study, with the trial id to report the run against.")
@click.option("--run-id", callback=given_run_id,
              help="The run this is for (the run_id you will report): "
              "asking again for it, as a restarted job does, returns the same recommendation "
              "(with --mode explore, its trial while it runs).")
@client_options
@json_option
def recommend(explain, mode, run_id, client, as_json, **kw) -> None:
    """Recommend lr, batch size, weight decay and QAT fraction for a spec. The hyperparameters
    given are pinned; the rest are their conditional optimum."""
    pins = pins_of(kw)
    with client() as c:
        rec = c.recommend(spec_of(kw), pins, mode=mode, run_id=run_id)
    if as_json:
        print_json(rec)
    else:
        from clients import render

        render.recommendation(rec, explain=explain)
        if rec.trial_id:
            click.echo(f"trial {rec.trial_id}: run lr={rec.lr:.6g}, batch_size_tokens="
                       f"{rec.batch_size_tokens:.0f}, weight_decay={rec.weight_decay:.6g}, "
                       f"qat_fraction={rec.qat_fraction:.6g}, then report it with "
                       f"`hparamrec report --trial-id {rec.trial_id}"
                       + (f" --run-id {shlex.quote(run_id)}" if run_id else "") + " ...`")


@app.command()
@spec_options
@click.option("--lr", type=float, required=True, help="Peak learning rate used.")
@click.option("--batch-size-tokens", type=QUANTITY, required=True, help="Global batch in tokens.")
@click.option("--weight-decay", type=float, required=True, help="AdamW weight decay used.")
@click.option("--qat-fraction", type=float, help="Fraction of training in QAT (default 0).")
@click.option("--loss", type=float, help="Final loss: mean cross-entropy in nats per token, "
                                         "smoothed over the last steps or on evaluation data.")
@click.option("--diverged", is_flag=True, help="The loss blew up (with --loss: the last finite "
                                                "loss it reached).")
@click.option("--failed", is_flag=True, help="Stopped for reasons unrelated to its hyperparameters.")
@click.option("--run-id", callback=given_run_id,
              help="Stable id; re-sending it stores nothing new (default: a new random id).")
@click.option("--recommendation-id", default="", help="The recommendation this run followed.")
@click.option("--trial-id", default="", help="The explore trial this run evaluated "
                                             "(printed by `recommend --mode explore`).")
@click.option("--meta", multiple=True, help="KEY=VALUE label, repeatable (each key once).")
@client_options
@json_option
def report(lr, batch_size_tokens, weight_decay, qat_fraction, loss, diverged, failed, run_id,
           recommendation_id, trial_id, meta, client, as_json, **kw) -> None:
    """Report a finished, diverged or failed run."""
    if diverged + failed + (loss is not None and not diverged) != 1:
        raise CliError("give exactly one of --loss, --diverged and --failed (a diverged run may "
                       "add the last finite --loss it reached)")
    from clients.models import Hyperparameters, RunOutcome, RunReport, RunStatus

    status = (RunStatus.DIVERGED if diverged else RunStatus.FAILED if failed
              else RunStatus.COMPLETED)
    metadata = metadata_of(meta)
    report = RunReport(
        run_id=run_id,
        spec=spec_of(kw),
        hyperparameters=Hyperparameters(lr=lr, batch_size_tokens=batch_size_tokens,
                                        weight_decay=weight_decay, qat_fraction=qat_fraction),
        outcome=RunOutcome(status=status, final_loss=loss),
        metadata=metadata,
        recommendation_id=recommendation_id,
        trial_id=trial_id,
    )
    with client() as c:
        response = c.report_run(report)
    if as_json:
        print_json(response)
    elif not response.differing_fields:
        verb = "stored" if response.created else "already stored"
        click.echo(f"run {response.run.run_id} {verb}")
    if response.differing_fields:  # a reused run_id: this report was not stored
        raise CliError(f"run {response.run.run_id} was stored before with other values "
                       f"({', '.join(response.differing_fields)}), which are kept: this report "
                       "was not stored; give each run its own --run-id")
    for warning in response.warnings:  # e.g. the trial had been closed by another run
        click.echo(f"warning: {warning}", err=True)

@app.command("send-unsent")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@client_options
@json_option(help='Print {"sent": [{"file": ..., "run_id": ..., "created": ..., "warnings": [...]}], '
                  '"kept": [{"file": ..., "reason": ...}]}.')
def send_unsent(paths, client, as_json) -> None:
    """Send the reports the integrations saved when the service was unreachable (PATHS: files
    or directories of them; default $HPARAMREC_UNSENT_DIR, else ~/.cache/hparamrec/unsent).
    Each file is removed once the service has the run as reported; a report it refuses, or
    holds under its run_id with other values, is kept and said (exit code 1). Sending one
    again is safe."""
    from clients import unsent

    directory = None if paths else unsent.unsent_dir()
    if directory is not None:
        paths = (directory,) if directory.is_dir() else ()
    files = unsent.saved_in(list(paths))
    if directory is not None and not files and not as_json:  # say where it looked
        click.echo(f"no saved reports in {directory}")
        return
    sent, kept = [], []
    with client() as c:
        for path in files:
            try:
                response = c.report_run(unsent.load(path))
            except (ValueError, InvalidArgumentError) as exc:  # this file, not the service
                kept.append({"file": str(path), "reason": str(exc)})
                continue
            if response.differing_fields:  # its run_id stored before with other values
                kept.append({"file": str(path), "reason": "; ".join(response.warnings)})
                continue
            path.unlink()  # the service holds the run as reported
            sent.append({"file": str(path), "run_id": response.run.run_id,
                         "created": response.created, "warnings": response.warnings})
    if as_json:
        print_json({"sent": sent, "kept": kept})
    else:
        for item in sent:
            verb = "stored" if item["created"] else "already stored"
            click.echo(f"run {item['run_id']} {verb} ({Path(item['file']).name} removed)")
            for warning in item["warnings"]:  # e.g. its trial had been given up meanwhile
                click.echo(f"warning: {warning}", err=True)
        for item in kept:
            click.echo(f"{item['file']}: kept: {item['reason']}", err=True)
        click.echo(f"{len(sent)} of {len(files)} saved reports sent")
    if kept:
        raise CliError(f"{len(kept)} saved report(s) kept: see above", 1)


@app.command()
@click.option("--trial-id", required=True, help="The explore trial whose run is still going "
                                                "(printed by `recommend --mode explore`).")
@click.option("--interval-seconds", type=click.FloatRange(min=0), default=0.0,
              help="How often you send heartbeats: the trial is then given up after 3 missed "
                   "ones, before the server's time-out, if the run dies (default: not said).")
@client_options
@json_option
def heartbeat(trial_id, interval_seconds, client, as_json) -> int:
    """Tell the service the run of an explore trial is still going, so the trial does not time
    out (send one every few minutes). Exits 0 while the trial runs, 1 once it has finished (the
    line, or the JSON's state and detail, says how): a run whose trial timed out is still
    reported, and counts as a configuration of its own."""
    with client() as c:
        answer = c.heartbeat(trial_id, interval_seconds=interval_seconds)
    if as_json:
        print_json(answer)
    elif answer.running:
        until = (f"times out at {answer.expires_at:%Y-%m-%d %H:%M:%S} UTC without another"
                 if answer.expires_at else "trials never time out on this server")
        click.echo(f"trial {trial_id} running: heartbeat recorded; {until}")
    else:
        click.echo(f"trial {trial_id} {answer.state.value}: {answer.detail}")
    return 0 if answer.running else 1


@app.group()
def runs() -> None:
    """Stored runs."""


@runs.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="At most this many runs, newest first.")
@spec_options
@client_options
@json_option
def runs_list(limit, client, as_json, **kw) -> None:
    """Stored runs, newest first. With --params and --tokens (or --compute), only the runs of
    that spec: sizes equal, and sequence length, architecture and bits where given."""
    spec = spec_filter_of(kw)
    with client() as c:
        found = list(c.iter_runs(limit=limit + 1, spec=spec))  # one more: are there others?
        hint = _sizes_as_stored(c, spec) if spec is not None and not found else ""
    more, found = len(found) > limit, found[:limit]
    if as_json:
        print_json({"runs": [to_dict(r) for r in found], "more": more})
    elif spec is not None and not found:
        click.echo(f"no stored runs of {spec.describe()}{hint}")
    else:
        from clients import render

        render.runs_table(found)
        if more:
            click.echo(f"older runs not shown: --limit {2 * limit} shows more")


@runs.command("show")
@click.argument("run_id")
@client_options
@json_option
def runs_show(run_id, client, as_json) -> None:
    """One stored run."""
    if not run_id:
        raise CliError("run_id: required")
    with client() as c:
        run = c.get_run(run_id)
    if as_json:
        print_json(run)
    else:
        from clients import render

        render.run_detail(run)


@runs.command("export")
@click.option("--format", "file_format", type=click.Choice(["jsonl", "csv"]), default="jsonl",
              show_default=True, help="The generic import format of docs/import-format.md.")
@click.option("--out", type=click.Path(dir_okay=False, writable=True),
              help="File to write (default: standard output).")
@spec_options
@client_options
@json_option(help='Print {"runs": N, "format": ..., "out": FILE} (needs --out).')
def runs_export(file_format, out, client, as_json, **kw) -> None:
    """Every stored run, oldest first, in the generic import format: the file re-imports with
    `hparamrec import --format csv|jsonl`. With --params and --tokens (or --compute), only the
    runs of that spec, as in `runs list`."""
    from clients.export import WRITERS

    spec = spec_filter_of(kw)
    if as_json and not out:
        raise CliError("--json needs --out: without it the runs themselves go to standard output")
    if out:
        check_out(out)
    with client() as c:
        found = list(c.iter_runs(page_size=1000, spec=spec))
    found.reverse()
    if out:
        try:
            with open(out, "w", encoding="utf-8", newline="") as f:
                count = WRITERS[file_format](found, f)
        except OSError as exc:
            raise CliError(f"--out: cannot write {out}: {exc.strerror}") from None
    else:
        count = WRITERS[file_format](found, sys.stdout)
    if as_json:
        print_json({"runs": count, "format": file_format, "out": out})
    elif out:
        click.echo(f"exported {count} runs to {out}", err=True)


@app.command()
@spec_options
@pin_options
@click.option("--out", required=True, type=click.Path(dir_okay=False, writable=True),
              help="Image file to write: the format follows the extension (png, svg, pdf, ...); "
                   "without one, .png is added.")
@click.option("--study", is_flag=True,
              help="Plot the refinement history of the spec's study (its runs in the order "
                   "reported, and the exploit recommendation) instead of the loss landscape.")
@click.option("--grid", "points", type=click.IntRange(5, 100), default=25, show_default=True,
              help="Points per axis of the landscape.")
@client_options
@json_option(help='Print {"out": FILE, "grid": [N, N], "runs": N, "failed": N, '
                  '"recommendation": {...}} (runs: the spec\'s stored runs, failed: those of '
                  'them not drawn); '
                  'with --study {"out": FILE, "runs": N, "trials": N, "diverged": N, '
                  '"failed": N, "best": {run} or null, "recommendation": {...}}.')
def plot(out, study, points, client, as_json, **kw) -> None:
    """The predicted loss over learning rate x batch size for a spec, with the recommendation,
    its 80% interval and the stored runs of the spec marked. Pin --weight-decay or
    --qat-fraction to hold them fixed; --lr and --batch-size-tokens move the recommendation.
    With --study: the runs of the spec's study (the spec and its pins) in the order reported,
    explore trials and your own runs, the best loss so far and the exploit recommendation."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CliError("plot needs matplotlib: pip install 'hparamrec[plot]'", 1) from None
    from clients import plot as plotting

    # Checked before any call to the server; `out` becomes the file matplotlib will write.
    check_out(out)
    try:
        out = plotting.figure_path(out)
    except ValueError as exc:
        raise CliError(f"--out: {exc}") from None
    if study:
        return _plot_study(out, spec_of(kw), pins_of(kw), client, as_json)

    pins = pins_of(kw)
    say = None
    if sys.stderr.isatty() and not as_json:
        say = lambda message: click.echo(f"\r\033[K{message}", err=True, nl=False)  # noqa: E731
    spec = spec_of(kw)
    with client() as c:
        rec, found, grid = plotting.landscape(c, spec, pins, points, say)
        hint = "" if found else _sizes_as_stored(c, spec)
    plotting.draw(out, rec, found, grid)
    if say:
        click.echo("\r\033[K", err=True, nl=False)
    marked = sum(map(len, plotting.marked_runs(found)))
    failed = len(found) - marked  # completed runs always have a loss: the rest failed
    if as_json:
        print_json({"out": out, "grid": [points, points], "runs": len(found), "failed": failed,
                     "recommendation": to_dict(rec)})
    else:
        not_drawn = f" ({failed} failed not drawn)" if failed else ""
        click.echo(f"wrote {out}: predicted loss on a {points} x {points} grid, "
                   f"{marked} stored runs of this spec marked{not_drawn}{hint}")


def _sizes_as_stored(c, spec, scanned: int = 2000) -> str:
    """When a size filter matched nothing: the sizes of a recent stored run that print the
    same (429260800 params shows as 429M, which matches no run typed back in), as a hint."""
    from clients.units import format_quantity

    def shown(run_spec, name):
        value = getattr(run_spec, name)
        return None if value is None else format_quantity(value)

    wanted = {n: shown(spec, n) for n in ("n_params", "n_tokens") if getattr(spec, n) is not None}
    for run in c.iter_runs(limit=scanned):
        if wanted and all(shown(run.spec, n) == v for n, v in wanted.items()) and not all(
                math.isclose(getattr(run.spec, n), getattr(spec, n), rel_tol=1e-9) for n in wanted):
            return (f"; stored runs of {format_quantity(run.spec.n_params)} params, "
                    f"{format_quantity(run.spec.n_tokens)} tokens have exactly --params "
                    f"{run.spec.n_params:.15g} --tokens {run.spec.n_tokens:.15g}")
    return ""


def _plot_study(out, spec, pins, client, as_json) -> None:
    from clients import study_plot
    from clients.models import RunStatus

    with client() as c:
        h = study_plot.history(c, spec, pins)
        hint = "" if h.runs else _sizes_as_stored(c, spec)
    if not h.runs:
        pinned = study_plot.describe_pins(pins)
        raise CliError(f"no stored runs of {h.rec.spec.describe()}, seq len {h.rec.spec.seq_len}"
                       + (f" with {pinned}" if pinned else "") + ": report runs of it (`hparamrec "
                       "recommend --mode explore` suggests the next one) before plotting its study"
                       + hint, 4)
    study_plot.draw(out, h)
    best = h.best
    diverged, failed = len(h.with_status(RunStatus.DIVERGED)), len(h.with_status(RunStatus.FAILED))
    if as_json:
        print_json({"out": out, "runs": len(h.runs), "trials": len(h.trials),
                     "diverged": diverged, "failed": failed,
                     "best": to_dict(best) if best else None, "recommendation": to_dict(h.rec)})
        return
    best_text = (f"best loss {best.outcome.final_loss:.3f} (run {best.run_id})" if best
                 else "no completed run yet")
    click.echo(f"wrote {out}: {_count(len(h.runs), 'run')} of the study "
               f"({_count(len(h.trials), 'explore trial')}, {diverged} diverged), {best_text}; "
               f"the exploit recommendation predicts {h.rec.predicted_loss:.3f}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# Admin commands (clients/cli_admin.py).
for command in (import_runs, keys, backtest):
    app.add_command(command)


# What the admin commands (serve, import, keys, backtest) import beyond the client: the
# hparamrec[server] extra.
SERVER_MODULES = frozenset({"sqlalchemy", "alembic", "numpy", "scipy", "sklearn", "lightgbm",
                            "optuna", "torch", "safetensors", "psycopg", "prometheus_client",
                            "threadpoolctl"})


def main(argv: list[str] | None = None) -> int:
    """Console entry point: turns every error into one line on stderr and an exit code."""
    try:
        result = app.main(args=argv, prog_name="hparamrec", standalone_mode=False)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except BrokenPipeError:
        # The reader went away (`| head -1`): stop quietly with 1, as click does when the pipe
        # closes during a command; stdout goes to /dev/null so the flush at exit cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except NoArgsIsHelp as exc:  # bare `hparamrec`: the help, as click prints it, not an error
        click.echo(exc.ctx.get_help(), err=True)
        return exc.exit_code
    except click.ClickException as exc:  # one line: click lists a missing choice's values one a line
        return _fail(" ".join(line.strip() for line in exc.format_message().splitlines()),
                     exc.exit_code)
    except click.Abort:
        return _fail("aborted", 130)
    except CliError as exc:
        return _fail(str(exc), exc.exit_code)
    except HparamrecError as exc:
        return _fail(str(exc), exc.exit_code)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in SERVER_MODULES:
            raise
        return _fail(f"this command needs the service's packages ({exc.name} is not installed): "
                     "pip install 'hparamrec[server]'", 1)
    return result if isinstance(result, int) else 0


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
