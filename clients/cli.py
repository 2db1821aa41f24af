"""The `hparamrec` command line.

Errors end in one line on stderr and a meaningful exit code: 2 bad input, 3 service
unreachable, 4 not found, 5 not authorised, 1 anything else. With --json a command prints one
JSON object whose keys are the proto field names.
"""

import json
import sys

import click
from google.protobuf import json_format

from clients.client import DEFAULT_TARGET, Client, spec
from clients.errors import HparamrecError
from clients.units import parse_quantity
from hparamrec.v1 import recommender_pb2 as pb


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


def server_option(f):
    return click.option("--server", envvar="HPARAMREC_SERVER", default=DEFAULT_TARGET,
                        show_default=True, help="Service address HOST:PORT.")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON object whose keys are the proto field names.")(f)


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


def _spec(kw: dict) -> pb.TrainingSpec:
    return spec(n_params=kw.pop("params"), n_active_params=kw.pop("active_params"),
                n_tokens=kw.pop("tokens"), compute_flops=kw.pop("compute"),
                seq_len=kw.pop("seq_len"), architecture=kw.pop("architecture"),
                weight_bits=kw.pop("bits"))


def to_dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


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
def serve(db, host, port) -> None:
    """Run the service until SIGTERM/SIGINT."""
    import logging

    # Server-side packages load only here, so the client commands start fast.
    from service.server import serve as run_server
    from service.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    overrides = {k: v for k, v in (("database_url", db), ("host", host), ("port", port))
                 if v is not None}
    run_server(Settings(**overrides))


@app.command()
@spec_options
@click.option("--lr", type=float, help="Pin the learning rate.")
@click.option("--batch-size-tokens", type=QUANTITY, help="Pin the batch size in tokens, e.g. 1M.")
@click.option("--weight-decay", type=float, help="Pin the weight decay.")
@click.option("--qat-fraction", type=float, help="Pin the QAT fraction.")
@server_option
@json_option
def recommend(lr, batch_size_tokens, weight_decay, qat_fraction, server, as_json, **kw) -> None:
    """Recommend lr, batch size, weight decay and QAT fraction for a spec. The hyperparameters
    given are pinned; the rest are their conditional optimum."""
    pins = pb.Pins(lr=lr, batch_size_tokens=batch_size_tokens, weight_decay=weight_decay,
                   qat_fraction=qat_fraction)
    with Client(server) as client:
        rec = client.recommend(_spec(kw), pins)
    if as_json:
        _print_json(rec)
    else:
        from clients import render

        render.recommendation(rec)


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
@click.option("--meta", multiple=True, help="KEY=VALUE label, repeatable.")
@server_option
@json_option
def report(lr, batch_size_tokens, weight_decay, qat_fraction, loss, diverged, failed, run_id,
           recommendation_id, meta, server, as_json, **kw) -> None:
    """Report a finished, diverged or failed run."""
    if diverged + failed + (loss is not None) != 1:
        raise CliError("give exactly one of --loss, --diverged and --failed")
    status = (pb.RUN_STATUS_DIVERGED if diverged else pb.RUN_STATUS_FAILED if failed
              else pb.RUN_STATUS_COMPLETED)
    metadata = {}
    for item in meta:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--meta: expected KEY=VALUE, got {item!r}")
        metadata[key] = value
    request = pb.ReportRunRequest(
        run_id=run_id,
        spec=_spec(kw),
        hyperparameters=pb.Hyperparameters(lr=lr, batch_size_tokens=batch_size_tokens,
                                           weight_decay=weight_decay, qat_fraction=qat_fraction),
        outcome=pb.RunOutcome(status=status, final_loss=loss),
        metadata=metadata,
        recommendation_id=recommendation_id,
    )
    with Client(server) as client:
        response = client.report_run(request)
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
@server_option
@json_option
def runs_list(limit, server, as_json) -> None:
    """Stored runs, newest first."""
    with Client(server) as client:
        found = list(client.iter_runs(limit=limit))
    if as_json:
        _print_json({"runs": [to_dict(r) for r in found]})
    else:
        from clients import render

        render.runs_table(found)


@runs.command("show")
@click.argument("run_id")
@server_option
@json_option
def runs_show(run_id, server, as_json) -> None:
    """One stored run."""
    with Client(server) as client:
        run = client.get_run(run_id)
    if as_json:
        _print_json(run)
    else:
        from clients import render

        render.run_detail(run)


IMPORT_FORMATS = ("steplaw", "csv", "jsonl")  # benchmark_db.importers.FORMATS, without its imports


@app.command("import")
@click.option("--db", envvar="HPARAMREC_DATABASE_URL", default="sqlite:///var/hparamrec.db",
              show_default=True, help="SQLAlchemy URL of the store (or HPARAMREC_DATABASE_URL).")
@click.option("--format", "file_format", type=click.Choice(IMPORT_FORMATS), required=True,
              help="steplaw: a Step Law sweep CSV; csv, jsonl: the generic format of "
                   "docs/import-format.md.")
@click.option("--tenant", default="default", show_default=True, help="Tenant the runs belong to.")
@json_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def import_runs(db, file_format, tenant, as_json, file) -> None:
    """Import runs from FILE straight into the database (an admin command: no server needed).
    A bad row stops the import before anything is stored; importing a file again adds nothing."""
    # Server-side packages load only here, so the client commands start fast.
    from sqlalchemy.exc import ArgumentError, OperationalError

    from benchmark_db.errors import InvalidArgument
    from benchmark_db.importers import import_file
    from benchmark_db.store import RunStore

    try:
        store = RunStore(db)
    except (ArgumentError, ValueError) as exc:
        raise CliError(f"--db: {exc}") from None
    except OperationalError as exc:  # unreachable, like a server that cannot be reached
        reason = str(exc.orig).strip().splitlines()[0]
        raise CliError(f"cannot open the database: {reason}", 3) from None
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
