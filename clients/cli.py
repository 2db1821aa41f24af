"""The `hparamrec` command line.

Errors end in one line on stderr and a meaningful exit code: 2 bad input, 3 service
unreachable, 4 not found, 5 not authorised, 1 anything else. With --json a command prints one
JSON object whose keys are the proto field names.
"""

import functools
import json
import sys

import click

from clients.client import DEFAULT_TARGET
from clients.errors import HparamrecError
from clients.units import parse_quantity


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class Quantity(click.ParamType):
    """A number in human units: 1.3B, 100B, 1M, 5e10."""

    name = "quantity"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            return parse_quantity(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


QUANTITY = Quantity()


def client_options(f):
    """--server, --api-key and --tls-ca, handed to the command as a `client()` factory."""

    @click.option("--server", envvar="HPARAMREC_SERVER", default=DEFAULT_TARGET,
                  show_default=True, help="Service address HOST:PORT (or HPARAMREC_SERVER).")
    @click.option("--api-key", envvar="HPARAMREC_API_KEY", help="API key (or HPARAMREC_API_KEY).")
    @click.option("--tls-ca", envvar="HPARAMREC_TLS_CA", type=click.Path(dir_okay=False),
                  help="PEM file of the CA that signed the server certificate: connect with TLS.")
    @functools.wraps(f)
    def wrapper(*args, server, api_key, tls_ca, **kwargs):
        def client():
            from clients.client import Client

            return Client(server, api_key=api_key, tls_ca=tls_ca)

        return f(*args, client=client, **kwargs)

    return wrapper


def db_option(f):
    return click.option("--db", envvar="HPARAMREC_DATABASE_URL", default="sqlite:///var/hparamrec.db",
                        show_default=True, help="SQLAlchemy URL of the database "
                        "(or HPARAMREC_DATABASE_URL).")(f)


def _open_store(db: str):
    """The store behind --db, with unusable URLs and unreachable databases as one-line errors."""
    from sqlalchemy.exc import ArgumentError, OperationalError

    from benchmark_db.store import RunStore

    try:
        return RunStore(db)
    except (ArgumentError, ValueError) as exc:
        raise CliError(f"--db: {exc}") from None
    except OperationalError as exc:  # unreachable, like a server that cannot be reached
        reason = str(exc.orig).strip().splitlines()[0]
        raise CliError(f"cannot open the database: {reason}", 3) from None


def json_option(f=None, *, help="Print one JSON object whose keys are the proto field names."):
    """--json; json_option(help=...) for commands whose JSON is not a proto message."""
    if f is None:
        return lambda g: json_option(g, help=help)
    return click.option("--json", "as_json", is_flag=True, help=help)(f)


def spec_options(f):
    """The TrainingSpec options, shared by every command that takes a spec."""
    options = [
        click.option("--params", type=QUANTITY, help="Non-embedding parameters, e.g. 1.3B."),
        click.option("--active-params", type=QUANTITY, help="Active parameters per token (MoE)."),
        click.option("--tokens", type=QUANTITY, help="Training tokens, e.g. 100B."),
        click.option("--compute", type=QUANTITY, help="Training FLOPs, e.g. 2.5e21."),
        click.option("--seq-len", type=int, help="Sequence length in tokens (default 2048)."),
        click.option("--architecture", help="dense (default) or moe."),
        click.option("--bits", type=int, help="Target weight bits; 16 (default) = no QAT."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _spec(kw: dict):
    from clients.models import TrainingSpec

    return TrainingSpec(n_params=kw.pop("params"), n_active_params=kw.pop("active_params"),
                        n_tokens=kw.pop("tokens"), compute_flops=kw.pop("compute"),
                        seq_len=kw.pop("seq_len"), architecture=kw.pop("architecture") or "",
                        weight_bits=kw.pop("bits"))


_SIZE_OPTIONS = ("params", "active_params", "tokens", "compute")


def _spec_filter(kw: dict):
    """The spec a runs command filters by: None when no size is given (every run). Sequence
    length, architecture and bits narrow the filter only when given."""
    if all(kw[name] is None for name in _SIZE_OPTIONS):
        given = [name for name in ("seq_len", "architecture", "bits") if kw.pop(name) is not None]
        if given:
            raise CliError(f"--{given[0].replace('_', '-')}: filters only with a spec's sizes; "
                           "give two of --params, --tokens and --compute")
        for name in _SIZE_OPTIONS:
            kw.pop(name)
        return None
    return _spec(kw)


def pin_options(f):
    """--lr, --batch-size-tokens, --weight-decay and --qat-fraction as pins."""
    options = [
        click.option("--lr", type=float, help="Pin the learning rate."),
        click.option("--batch-size-tokens", type=QUANTITY,
                     help="Pin the batch size in tokens, e.g. 1M."),
        click.option("--weight-decay", type=float, help="Pin the weight decay."),
        click.option("--qat-fraction", type=float, help="Pin the QAT fraction."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _pins(kw: dict):
    from clients.models import Pins

    return Pins(**{name: kw.pop(name) for name in
                   ("lr", "batch_size_tokens", "weight_decay", "qat_fraction")})


def to_dict(model) -> dict:
    """The proto JSON form of a model or message: keys are the proto field names."""
    from clients.convert import as_dict

    return as_dict(model)


def _print_json(data) -> None:
    click.echo(json.dumps(data if isinstance(data, dict) else to_dict(data), indent=2))


@click.group(help="Hyperparameter recommendations for language-model pretraining.")
def app() -> None:
    pass


@app.command()
@click.option("--db", help="SQLAlchemy URL of the store (default: HPARAMREC_DATABASE_URL or "
                           "sqlite:///var/hparamrec.db).")
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 50051; 0 picks a free one).")
@click.option("--no-auth", is_flag=True, default=None,
              help="Switch authentication off (local development): every caller is one tenant.")
@click.option("--metrics-port", type=int, help="Prometheus metrics port (default 9464).")
@click.option("--tls-cert", help="PEM server certificate: serve TLS (with --tls-key).")
@click.option("--tls-key", help="PEM private key of --tls-cert.")
@click.option("--predictor", help="Learned model once runs exist (default auto).")
@click.option("--log-format", type=click.Choice(["json", "text"]), help="Log lines (default json).")
def serve(db, host, port, no_auth, metrics_port, tls_cert, tls_key, predictor, log_format) -> None:
    """Run the service until SIGTERM/SIGINT (flags override HPARAMREC_* variables)."""
    # Server-side packages load only here, so the client commands start fast.
    from pydantic import ValidationError

    from service.observability import configure_logging
    from service.server import ConfigurationError
    from service.server import serve as run_server
    from service.settings import Settings

    flags = {"database_url": db, "host": host, "port": port, "auth_disabled": no_auth,
             "metrics_port": metrics_port, "tls_cert_file": tls_cert, "tls_key_file": tls_key,
             "predictor": predictor, "log_format": log_format}
    try:
        settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CliError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    configure_logging(settings.log_format)
    try:
        run_server(settings)
    except (ConfigurationError, ValueError, OSError) as exc:
        raise CliError(str(exc), 2) from None


@app.command()
@spec_options
@pin_options
@click.option("--explain", is_flag=True,
              help="Also print every source's formula or fit, versions and the resolved spec.")
@click.option("--mode", type=click.Choice(["exploit", "explore"]), default="exploit",
              show_default=True, help="exploit: the best predicted configuration; explore: the "
              "next trial of the spec's study, with the trial id to report the run against.")
@client_options
@json_option
def recommend(explain, mode, client, as_json, **kw) -> None:
    """Recommend lr, batch size, weight decay and QAT fraction for a spec. The hyperparameters
    given are pinned; the rest are their conditional optimum."""
    pins = _pins(kw)
    with client() as c:
        rec = c.recommend(_spec(kw), pins, mode=mode)
    if as_json:
        _print_json(rec)
    else:
        from clients import render

        render.recommendation(rec, explain=explain)
        if rec.trial_id:
            click.echo(f"trial {rec.trial_id}: run lr={rec.lr:.6g}, batch_size_tokens="
                       f"{rec.batch_size_tokens:.0f}, weight_decay={rec.weight_decay:.6g}, "
                       f"qat_fraction={rec.qat_fraction:.6g}, then report it with "
                       f"`hparamrec report --trial-id {rec.trial_id} ...`")


@app.command()
@spec_options
@click.option("--lr", type=float, required=True, help="Peak learning rate used.")
@click.option("--batch-size-tokens", type=QUANTITY, required=True, help="Global batch in tokens.")
@click.option("--weight-decay", type=float, required=True, help="AdamW weight decay used.")
@click.option("--qat-fraction", type=float, help="Fraction of training in QAT (default 0).")
@click.option("--loss", type=float, help="Final training loss.")
@click.option("--diverged", is_flag=True, help="The loss blew up.")
@click.option("--failed", is_flag=True, help="Stopped for reasons unrelated to its hyperparameters.")
@click.option("--run-id", default="", help="Stable id; re-sending it stores nothing new "
                                           "(default: a new random id).")
@click.option("--recommendation-id", default="", help="The recommendation this run followed.")
@click.option("--trial-id", default="", help="The explore trial this run evaluated "
                                             "(printed by `recommend --mode explore`).")
@click.option("--meta", multiple=True, help="KEY=VALUE label, repeatable.")
@client_options
@json_option
def report(lr, batch_size_tokens, weight_decay, qat_fraction, loss, diverged, failed, run_id,
           recommendation_id, trial_id, meta, client, as_json, **kw) -> None:
    """Report a finished, diverged or failed run."""
    if diverged + failed + (loss is not None) != 1:
        raise CliError("give exactly one of --loss, --diverged and --failed")
    from clients.models import Hyperparameters, RunOutcome, RunReport, RunStatus

    status = (RunStatus.DIVERGED if diverged else RunStatus.FAILED if failed
              else RunStatus.COMPLETED)
    metadata = {}
    for item in meta:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--meta: expected KEY=VALUE, got {item!r}")
        metadata[key] = value
    report = RunReport(
        run_id=run_id,
        spec=_spec(kw),
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
        _print_json(response)
    else:
        verb = "stored" if response.created else "already stored"
        click.echo(f"run {response.run.run_id} {verb}")


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
    spec = _spec_filter(kw)
    with client() as c:
        found = list(c.iter_runs(limit=limit, spec=spec))
    if as_json:
        _print_json({"runs": [to_dict(r) for r in found]})
    elif spec is not None and not found:
        click.echo(f"no stored runs of {spec.describe()}")
    else:
        from clients import render

        render.runs_table(found)


@runs.command("show")
@click.argument("run_id")
@client_options
@json_option
def runs_show(run_id, client, as_json) -> None:
    """One stored run."""
    with client() as c:
        run = c.get_run(run_id)
    if as_json:
        _print_json(run)
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

    spec = _spec_filter(kw)
    if as_json and not out:
        raise CliError("--json needs --out: without it the runs themselves go to standard output")
    with client() as c:
        found = list(c.iter_runs(page_size=1000, spec=spec))
    found.reverse()
    if out:
        with open(out, "w", encoding="utf-8", newline="") as f:
            count = WRITERS[file_format](found, f)
    else:
        count = WRITERS[file_format](found, sys.stdout)
    if as_json:
        _print_json({"runs": count, "format": file_format, "out": out})
    elif out:
        click.echo(f"exported {count} runs to {out}", err=True)


@app.command()
@spec_options
@pin_options
@click.option("--out", required=True, type=click.Path(dir_okay=False, writable=True),
              help="Image file to write (PNG; the format follows the extension).")
@click.option("--study", is_flag=True,
              help="Plot the refinement history of the spec's study (its runs in the order "
                   "reported, and the exploit recommendation) instead of the loss landscape.")
@click.option("--grid", "points", type=click.IntRange(5, 100), default=25, show_default=True,
              help="Points per axis of the landscape.")
@client_options
@json_option(help='Print {"out": FILE, "grid": [N, N], "runs": N, "recommendation": {...}}; '
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
    if study:
        return _plot_study(out, _spec(kw), _pins(kw), client, as_json)
    from clients import plot as plotting

    pins = _pins(kw)
    say = None
    if sys.stderr.isatty() and not as_json:
        say = lambda message: click.echo(f"\r\033[K{message}", err=True, nl=False)  # noqa: E731
    with client() as c:
        rec, found, grid = plotting.landscape(c, _spec(kw), pins, points, say)
    plotting.draw(out, rec, found, grid)
    if say:
        click.echo("\r\033[K", err=True, nl=False)
    if as_json:
        _print_json({"out": out, "grid": [points, points], "runs": len(found),
                     "recommendation": to_dict(rec)})
    else:
        click.echo(f"wrote {out}: predicted loss on a {points} x {points} grid, "
                   f"{len(found)} stored runs of this spec marked")


def _plot_study(out, spec, pins, client, as_json) -> None:
    from clients import study_plot
    from clients.models import RunStatus

    with client() as c:
        h = study_plot.history(c, spec, pins)
    if not h.runs:
        pinned = study_plot.describe_pins(pins)
        raise CliError(f"no stored runs of {h.rec.spec.describe()}, seq len {h.rec.spec.seq_len}"
                       + (f" with {pinned}" if pinned else "") + ": report runs of it (`hparamrec "
                       "recommend --mode explore` suggests the next one) before plotting its study",
                       4)
    study_plot.draw(out, h)
    best = h.best
    diverged, failed = len(h.with_status(RunStatus.DIVERGED)), len(h.with_status(RunStatus.FAILED))
    if as_json:
        _print_json({"out": out, "runs": len(h.runs), "trials": len(h.trials),
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


IMPORT_FORMATS = ("steplaw", "csv", "jsonl")  # benchmark_db.importers.FORMATS, without its imports


@app.command("import")
@db_option
@click.option("--format", "file_format", type=click.Choice(IMPORT_FORMATS), required=True,
              help="steplaw: a Step Law sweep CSV; csv, jsonl: the generic format of "
                   "docs/import-format.md.")
@click.option("--tenant", default="default", show_default=True, help="Tenant the runs belong to.")
@json_option(help='Print {"read": N, "added": N, "already_stored": N, "diverged": N}.')
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def import_runs(db, file_format, tenant, as_json, file) -> None:
    """Import runs from FILE straight into the database (an admin command: no server needed).
    A bad row stops the import before anything is stored; importing a file again adds nothing."""
    from benchmark_db.errors import InvalidArgument
    from benchmark_db.importers import import_file

    store = _open_store(db)
    counter = _stderr_row_counter()
    try:
        result = import_file(store, tenant, file, file_format, progress=counter)
    except InvalidArgument as exc:
        raise CliError(f"{file}: {exc}") from None
    finally:
        store.close()
        if counter:
            click.echo("\r\033[K", err=True, nl=False)  # erase the counter
    if as_json:
        _print_json(result.as_dict())
    else:
        click.echo(f"read {result.read} runs ({result.diverged} diverged): {result.added} added, "
                   f"{result.already_stored} already stored")


@app.group()
def keys() -> None:
    """API keys (admin commands on the database: no server needed)."""


@keys.command("create")
@db_option
@click.option("--tenant", required=True, help="Tenant the key acts for.")
@click.option("--label", default="", help="What the key is for, e.g. the cluster's name.")
@json_option(help='Print {"key": ..., "key_id": ..., "tenant": ..., "label": ...}.')
def keys_create(db, tenant, label, as_json) -> None:
    """Create a key. It is printed once and only its hash is stored."""
    from benchmark_db.errors import InvalidArgument

    store = _open_store(db)
    try:
        key, info = store.keys.create(tenant, label)
    except InvalidArgument as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    if as_json:
        _print_json({"key": key, "key_id": info.key_id, "tenant": info.tenant, "label": info.label})
    else:
        click.echo(key)
        click.echo(f"key id {info.key_id} for tenant {info.tenant}: store the key now, it is "
                   "not shown again", err=True)


@keys.command("list")
@db_option
@json_option(help='Print {"keys": [{"key_id": ..., "tenant": ..., ...}]}.')
def keys_list(db, as_json) -> None:
    """Key ids, tenants and states (never the keys)."""
    store = _open_store(db)
    try:
        found = store.keys.list()
    finally:
        store.close()
    rows = [{"key_id": k.key_id, "tenant": k.tenant, "label": k.label,
             "created_at": k.created_at.isoformat(),
             "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None} for k in found]
    if as_json:
        _print_json({"keys": rows})
        return
    for row in rows:
        state = f"revoked {row['revoked_at'][:19]}" if row["revoked_at"] else "active"
        click.echo(f"{row['key_id']}  {row['tenant']:<20} {state:<28} {row['label']}")
    if not rows:
        click.echo("no API keys")


@keys.command("revoke")
@db_option
@click.argument("key_id")
@json_option(help='Print {"key_id": ..., "tenant": ..., "label": ..., "revoked_at": ...}.')
def keys_revoke(db, key_id, as_json) -> None:
    """Revoke a key by its id: every replica refuses it from the next call on."""
    from benchmark_db.errors import NotFound

    store = _open_store(db)
    try:
        info = store.keys.revoke(key_id)
    except NotFound as exc:
        raise CliError(str(exc), 4) from None
    finally:
        store.close()
    if as_json:
        _print_json({"key_id": info.key_id, "tenant": info.tenant, "label": info.label,
                     "revoked_at": info.revoked_at.isoformat()})
    else:
        click.echo(f"revoked {info.key_id} (tenant {info.tenant})")


@app.command()
@click.option("--runs", "runs_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Sweep results to backtest on.")
@click.option("--format", "file_format", type=click.Choice(IMPORT_FORMATS), required=True,
              help="Format of --runs (and of --context files).")
@click.option("--context", "context_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="More runs used for fitting in every fold, never scored (repeatable).")
@click.option("--predictor", default="auto", show_default=True,
              help="prior, surface, lightgbm or auto.")
@json_option(help="Print the backtest's results as one JSON object.")
def backtest(runs_file, file_format, context_files, predictor, as_json) -> None:
    """Leave-one-group-out backtest: each (n_params, n_active_params, n_tokens) group is
    predicted by a model fitted on all other groups (plus --context) and never on itself."""
    from benchmark_db.errors import InvalidArgument
    from benchmark_db.importers import read_runs
    from predictor.backtest import backtest as run_backtest
    from predictor.predictors import MODEL_FACTORIES
    from predictor.table import RunTable

    if predictor not in MODEL_FACTORIES:
        raise CliError(f"--predictor: choose from {', '.join(MODEL_FACTORIES)}")
    try:
        table = RunTable.from_runs(read_runs(runs_file, file_format))
        context = RunTable.concat([RunTable.from_runs(read_runs(f, file_format))
                                   for f in context_files]) if context_files else None
    except InvalidArgument as exc:
        raise CliError(str(exc)) from None
    if len(table) == 0:
        raise CliError(f"{runs_file}: no runs to backtest")
    progress = None
    if sys.stderr.isatty():
        progress = lambda done, total: click.echo(f"\rfold {done}/{total}", err=True, nl=False)  # noqa: E731
    result = run_backtest(table, predictor, context, progress)
    if as_json:
        _print_json(result)
    else:
        from clients import render

        render.backtest_table(table, result)


def _stderr_row_counter():
    """A running count of rows read, for large files, when someone watches stderr."""
    if not sys.stderr.isatty():
        return None
    return lambda rows: click.echo(f"\rread {rows} rows", err=True, nl=False)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: turns every error into one line on stderr and an exit code."""
    try:
        result = app.main(args=argv, prog_name="hparamrec", standalone_mode=False)
    except click.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        return _fail("aborted", 130)
    except CliError as exc:
        return _fail(str(exc), exc.exit_code)
    except HparamrecError as exc:
        return _fail(str(exc), exc.exit_code)
    return result if isinstance(result, int) else 0


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
