"""What the `hparamrec` commands share: errors with exit codes, human units, the option sets
(server, database, spec, pins, --json) and JSON output."""

import functools
import json
from contextlib import contextmanager
from pathlib import Path

import click

from clients.client import DEFAULT_TARGET
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


def given_run_id(_ctx, _param, value: str | None) -> str:
    """--run-id: left out means none (a new id, for a report); given empty, it is refused, as
    `--run-id "$SLURM_JOB_ID"` with the variable unset would silently lose idempotency."""
    if value is not None and not value.strip():
        raise CliError("--run-id: empty (an unset variable?); leave the flag out for no run id")
    return value or ""


# Client's arguments by the flags that set them, for the errors of unusable settings.
CLIENT_FLAGS = {"target": "--server", "tls_ca": "--tls-ca", "api_key": "--api-key"}


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
            from clients.client import Client, check_target
            from clients.errors import ClientSettingsError

            try:
                check_target(server, require_port=True)  # the documented HOST:PORT
                return Client(server, api_key=api_key, tls_ca=tls_ca)
            except ClientSettingsError as exc:  # named by the flag, not the argument
                field, problem = exc.field_violations[0]
                raise CliError(f"{_named(CLIENT_FLAGS.get(field, field))}: {problem}") from None

        from clients.errors import UnavailableError

        try:
            return f(*args, client=client, **kwargs)
        except UnavailableError as exc:
            if not _defaulted("server"):
                raise
            # A misspelt HPARAMREC_SERVER falls back to the default silently: say it did.
            raise CliError(f"{exc} (no --server or HPARAMREC_SERVER was given: the default "
                           f"{DEFAULT_TARGET} was used)", exc.exit_code) from None

    return wrapper


def check_out(path: str) -> None:
    """--out must land in an existing, writable directory: checked before any call to the
    server, so a typo does not cost the calls (click checks only files that exist)."""
    import os

    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise CliError(f"--out: no such directory: {directory}")
    if not os.access(directory, os.W_OK):
        raise CliError(f"--out: directory not writable: {directory}")


def db_option(f):
    return click.option("--db", envvar="HPARAMREC_DATABASE_URL", default="sqlite:///var/hparamrec.db",
                        show_default=True, help="SQLAlchemy URL of the database "
                        "(or HPARAMREC_DATABASE_URL).")(f)


@contextmanager
def database_errors(db: str = ""):
    """Unusable --db URLs and unreachable databases as one-line errors (import, keys, serve)."""
    from sqlalchemy.exc import ArgumentError, OperationalError

    try:
        yield
    except ArgumentError as exc:
        if db and "://" not in db:  # a bare path, the commonest slip
            raise CliError(f"--db: {db!r} is not a database URL: for that SQLite file give "
                           f"sqlite:///{Path(db).absolute()}") from None
        raise CliError(f"--db: {exc}: give sqlite:///PATH or "
                       "postgresql://USER:PASSWORD@HOST/DATABASE") from None
    except ValueError as exc:
        raise CliError(f"--db: {exc}") from None
    except OperationalError as exc:  # unreachable, like a server that cannot be reached
        reason = str(exc.orig).strip().splitlines()[0]
        raise CliError(f"cannot open the database: {reason}", 3) from None


def check_db(db: str, create: bool = True) -> None:
    """What open_store refuses before it opens anything (a bad URL, a file that is not an
    SQLite database or not ours), for a command that reads its input before it opens the
    database (import: a bad row leaves no new database behind)."""
    from benchmark_db.migrate import check_database

    with database_errors(db):
        check_database(db, create)


def open_store(db: str, create: bool = True):
    """The store behind --db (database_errors). create=False, for commands that only read or
    change what is stored (keys list, keys revoke): the database must hold hparamrec's schema
    already, and is neither created nor migrated (a missing SQLite file is a typo, not a new
    database). A writing command that makes a new SQLite file says so on stderr."""
    from benchmark_db.engine import created_new_database, sqlite_file
    from benchmark_db.store import RunStore

    with database_errors(db):
        path = sqlite_file(db)  # None for an in-memory one too: the engine says why it is refused
        new = path is not None and not path.exists()
        store = RunStore(db, create=create)
    if new:  # a mistyped --db, or run from another directory than the server's
        why = (" (no --db given: the default is relative to the current directory)"
               if _defaulted("db") else "")
        click.echo(f"note: {created_new_database(path.resolve())}{why}", err=True)
    return store


def _named(flag: str) -> str:
    """The flag, or the variable its value came from: an error on HPARAMREC_SERVER blamed a
    --server that was never given."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    name = flag.removeprefix("--").replace("-", "_")
    if ctx is None or ctx.get_parameter_source(name) is not ParameterSource.ENVIRONMENT:
        return flag
    option = next((p for p in ctx.command.params if p.name == name), None)
    return f"{option.envvar} (for {flag})" if option is not None and option.envvar else flag


def _defaulted(parameter: str) -> bool:
    """Whether the running command's parameter took its default (no flag, no variable)."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source(parameter) is ParameterSource.DEFAULT


def metadata_of(items: tuple[str, ...]) -> dict[str, str]:
    """--meta KEY=VALUE labels as a dict; a key given twice is an error, not the last value
    silently kept."""
    metadata: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--meta: expected KEY=VALUE, got {item!r}")
        if key in metadata:
            raise CliError(f"--meta: key {key} given twice")
        metadata[key] = value
    check_metadata(metadata)
    return metadata


def check_metadata(metadata: dict[str, str]) -> None:
    """The server's limits, in its words, before the call (see clients/models.py)."""
    from clients.models import (MAX_METADATA_ENTRIES, MAX_METADATA_KEY_BYTES,
                                MAX_METADATA_VALUE_BYTES)

    if len(metadata) > MAX_METADATA_ENTRIES:
        raise CliError(f"metadata: at most {MAX_METADATA_ENTRIES} entries")
    for key, value in metadata.items():
        if not key or len(key.encode()) > MAX_METADATA_KEY_BYTES:
            raise CliError(f"metadata: key must be 1-{MAX_METADATA_KEY_BYTES} bytes")
        if len(value.encode()) > MAX_METADATA_VALUE_BYTES:
            raise CliError(f"metadata[{key!r}]: value over {MAX_METADATA_VALUE_BYTES} bytes")


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
        click.option("--architecture",
                     help="dense or moe (default: moe when --active-params is below --params)."),
        click.option("--bits", type=int, help="Target weight bits; 16 (default) = no QAT."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def spec_of(kw: dict):
    from clients.models import TrainingSpec

    return TrainingSpec(n_params=kw.pop("params"), n_active_params=kw.pop("active_params"),
                        n_tokens=kw.pop("tokens"), compute_flops=kw.pop("compute"),
                        seq_len=kw.pop("seq_len"), architecture=kw.pop("architecture") or "",
                        weight_bits=kw.pop("bits"))


SIZE_OPTIONS = ("params", "active_params", "tokens", "compute")


def spec_filter_of(kw: dict):
    """The spec a runs command filters by: None when no size is given (every run). Sequence
    length, architecture and bits narrow the filter only when given."""
    if all(kw[name] is None for name in SIZE_OPTIONS):
        given = [name for name in ("seq_len", "architecture", "bits") if kw.pop(name) is not None]
        if given:
            raise CliError(f"--{given[0].replace('_', '-')}: filters only with a spec's sizes; "
                           "give two of --params, --tokens and --compute")
        for name in SIZE_OPTIONS:
            kw.pop(name)
        return None
    return spec_of(kw)


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


def pins_of(kw: dict):
    from clients.models import Pins

    return Pins(**{name: kw.pop(name) for name in
                   ("lr", "batch_size_tokens", "weight_decay", "qat_fraction")})


def to_dict(model) -> dict:
    """The proto JSON form of a model or message: keys are the proto field names."""
    from clients.convert import as_dict

    return as_dict(model)


def print_json(data) -> None:
    click.echo(json.dumps(data if isinstance(data, dict) else to_dict(data), indent=2))
