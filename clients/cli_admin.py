"""Admin commands of `hparamrec`, which work on the database or on files, with no server:
import, keys, backtest."""

import sys
from datetime import UTC, datetime

import click

from clients.cli_options import (CliError, check_db, db_option, json_option, open_store,
                                 print_json)


IMPORT_FORMATS = ("steplaw", "csv", "jsonl")  # benchmark_db.importers.FORMATS, without its imports


@click.command("import")
@db_option
@click.option("--format", "file_format", type=click.Choice(IMPORT_FORMATS), required=True,
              help="steplaw: a Step Law sweep CSV; csv, jsonl: the generic format of "
                   "docs/import-format.md.")
@click.option("--tenant", default="default", show_default=True, help="Tenant the runs belong to.")
@json_option(help='Print {"read": N, "added": N, "already_stored": N, "diverged": N, '
                  '"conflicting": [run_id, ...]}.')
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def import_runs(db, file_format, tenant, as_json, file) -> None:
    """Import runs from FILE straight into the database (an admin command: no server needed).
    A bad row stops the import before anything is stored; importing a file again adds nothing."""
    from benchmark_db.errors import InvalidArgument
    from benchmark_db.importers import read_file, store_runs

    # The flags and the whole file are checked before the database is opened: a bad row leaves
    # no new database behind. The runs are kept packed meanwhile (importers/packed.py).
    check_db(db)
    _check_flags(tenant=tenant)
    counter = _stderr_row_counter()
    try:
        reports = read_file(file, file_format, progress=counter)
    except InvalidArgument as exc:
        raise CliError(f"{file}: {exc}") from None
    finally:
        if counter:
            click.echo("\r\033[K", err=True, nl=False)  # erase the counter
    store = open_store(db)
    try:
        result = store_runs(store, tenant, reports)
        unread = _unread_tenant(store, tenant)
    finally:
        store.close()
    if result.conflicting:
        shown = ", ".join(repr(i) for i in result.conflicting[:3])
        more = f" and {len(result.conflicting) - 3} more" if len(result.conflicting) > 3 else ""
        click.echo(f"warning: {len(result.conflicting)} run(s) were stored before with other "
                   f"values, which are kept ({shown}{more}): give each run its own run_id",
                   err=True)
    if unread:
        click.echo(f"note: the runs are in tenant {tenant}, which no active API key reads; "
                   "give --tenant to import them for a team", err=True)
    if as_json:
        print_json(result.as_dict())
    else:
        runs = "run" if result.read == 1 else "runs"
        click.echo(f"read {result.read} {runs} ({result.diverged} diverged): {result.added} added, "
                   f"{result.already_stored} already stored")


def _check_flags(**values: str) -> None:
    """--tenant and --label by the store's rules, before the database is opened (a refused
    command leaves no new database behind); the error is named by the flag."""
    from benchmark_db.errors import InvalidArgument
    from benchmark_db.keys import check_label
    from benchmark_db.records import check_tenant

    checks = {"tenant": check_tenant, "label": check_label}
    try:
        for name, value in values.items():
            checks[name](value)
    except InvalidArgument as exc:
        raise CliError("; ".join(f"--{v.field}: {v.reason}" for v in exc.violations)) from None


def _unread_tenant(store, tenant: str) -> bool:
    """Whether keys are in use but none is the tenant's: runs imported there (`--tenant`
    forgotten, say) reach only servers without authentication."""
    active = {k.tenant for k in store.keys.list() if k.revoked_at is None}
    return bool(active) and tenant not in active


@click.group()
def keys() -> None:
    """API keys (admin commands on the database: no server needed)."""


@keys.command("create")
@db_option
@click.option("--tenant", required=True, help="Tenant the key acts for.")
@click.option("--label", default="", help="What the key is for, e.g. the cluster's name "
                                          "(one line, at most 200 characters).")
@json_option(help='Print {"key": ..., "key_id": ..., "tenant": ..., "label": ...}.')
def keys_create(db, tenant, label, as_json) -> None:
    """Create a key. It is printed once and only its hash is stored."""
    _check_flags(tenant=tenant, label=label)
    store = open_store(db)
    try:
        key, info = store.keys.create(tenant, label)
    finally:
        store.close()
    if as_json:
        print_json({"key": key, "key_id": info.key_id, "tenant": info.tenant, "label": info.label})
    else:
        click.echo(key)
        click.echo(f"key id {info.key_id} for tenant {info.tenant}: store the key now, it is "
                   "not shown again", err=True)


@keys.command("list")
@db_option
@json_option(help='Print {"keys": [{"key_id": ..., "tenant": ..., ...}]}.')
def keys_list(db, as_json) -> None:
    """Key ids, tenants and states (never the keys)."""
    store = open_store(db, create=False)
    try:
        found = store.keys.list()
    finally:
        store.close()
    rows = [{"key_id": k.key_id, "tenant": k.tenant, "label": k.label,
             "created_at": k.created_at.isoformat(),
             "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None} for k in found]
    if as_json:
        print_json({"keys": rows})
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

    store = open_store(db, create=False)
    asked = datetime.now(UTC)
    try:
        info = store.keys.revoke(key_id)
    except NotFound as exc:
        raise CliError(str(exc), 4) from None
    finally:
        store.close()
    if as_json:
        print_json({"key_id": info.key_id, "tenant": info.tenant, "label": info.label,
                     "revoked_at": info.revoked_at.isoformat()})
    else:
        when = "" if info.revoked_at >= asked else f" already, at {info.revoked_at:%Y-%m-%d %H:%M} UTC"
        click.echo(f"revoked {info.key_id} (tenant {info.tenant}){when}")


@click.command()
@click.option("--runs", "runs_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Sweep results to backtest on.")
@click.option("--format", "file_format", type=click.Choice(IMPORT_FORMATS), required=True,
              help="Format of --runs (and of --context files).")
@click.option("--context", "context_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="More runs to fit on in every fold, never scored; those of the fold's "
                   "held-out group are left out (repeatable).")
@click.option("--predictor", default="auto", show_default=True,
              help="prior, surface, lightgbm, auto, pfn or ensemble.")
@json_option(help="Print the backtest's results as one JSON object.")
def backtest(runs_file, file_format, context_files, predictor, as_json) -> None:
    """Leave-one-group-out backtest: each (n_params, n_active_params, n_tokens) group is
    predicted by a model fitted on all other groups (plus --context) and never on itself
    (--context runs of the held-out group are left out of its fold)."""
    from predictor.backtest import backtest as run_backtest
    from predictor.predictors import MODEL_FACTORIES
    from predictor.table import RunTable

    if predictor not in MODEL_FACTORIES:
        raise CliError(f"--predictor: choose from {', '.join(MODEL_FACTORIES)}")
    table = _read_table(runs_file, file_format)
    context = RunTable.concat([_read_table(f, file_format)
                               for f in context_files]) if context_files else None
    if len(table) == 0:
        raise CliError(f"{runs_file}: no runs to backtest")
    progress = None
    if sys.stderr.isatty():
        progress = lambda done, total: click.echo(f"\rfold {done}/{total}", err=True, nl=False)  # noqa: E731
    result = run_backtest(table, predictor, context, progress)
    if progress:
        click.echo("\r\033[K", err=True, nl=False)  # erase the counter: the table starts there
    if left_out := sum(group["context_runs_left_out"] for group in result["groups"]):
        click.echo(f"note: --context holds {left_out} runs of groups in {runs_file}; each fold "
                   "left out those of the group it held out", err=True)
    if len(result["groups"]) == 1 and context is None:  # its figures would pass for a fit's
        click.echo(f"note: {runs_file} holds one group, so its fold fits on no runs: the figures "
                   "are those of the published laws (--context adds runs to fit on)", err=True)
    if as_json:
        print_json(result)
    else:
        from clients import render

        render.backtest_table(table, result)


def _read_table(path: str, file_format: str):
    """The runs of a file as a table; a bad row names the file, as `import` does (backtest
    reads several)."""
    from benchmark_db.errors import InvalidArgument
    from benchmark_db.importers import read_runs
    from predictor.table import RunTable

    try:
        return RunTable.from_runs(read_runs(path, file_format))
    except InvalidArgument as exc:
        raise CliError(f"{path}: {exc}") from None


def _stderr_row_counter():
    """A running count of rows read, for large files, when someone watches stderr."""
    if not sys.stderr.isatty():
        return None
    return lambda rows: click.echo(f"\rread {rows} rows", err=True, nl=False)
