"""An import holds a file's runs packed and stores them a batch at a time: it held every run as
a RunReport (about 3.5 KB each) and every row of a CSV besides, 514 MB for 100k runs."""

import gc

import pytest
import sqlalchemy as sa

import benchmark_db.store as store_module
from benchmark_db.importers import import_file, store_runs
from benchmark_db.importers.rows import PROGRESS_EVERY
from benchmark_db.records import RunReport
from benchmark_db.store import RunStore
from tests.factories import make_report

pytestmark = pytest.mark.integration
HEADER = "run_id,n_params,n_tokens,lr,batch_size_tokens,weight_decay,final_loss\n"


def live_reports() -> int:
    # type(), not isinstance: isinstance reads __class__, which some objects warn about.
    return sum(issubclass(type(o), RunReport) for o in gc.get_objects())


def test_an_import_holds_a_batch_of_reports_at_a_time_not_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "INSERT_CHUNK", 500)
    n = 2 * PROGRESS_EVERY + 1
    path = tmp_path / "runs.csv"
    path.write_text(HEADER + "".join(f"r{i},1e9,2e10,{1e-4 * (1 + i / n):.6g},1e6,0.1,2.5\n"
                                     for i in range(n)))
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    gc.collect()
    before = live_reports()
    while_reading, while_inserting = [], []

    def count_at_insert(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("INSERT INTO RUNS"):
            while_inserting.append(live_reports() - before)

    sa.event.listen(store.engine, "before_cursor_execute", count_at_insert)
    try:
        result = import_file(store, "default", path, "csv",
                             progress=lambda rows: while_reading.append(live_reports() - before))
        assert result.added == n and store.count("default") == n
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", count_at_insert)
        store.close()
    # 999 and 1999 held before; then all 2001 at each insert.
    assert len(while_reading) == 2 and max(while_reading) < 10, while_reading
    assert len(while_inserting) >= 4
    assert max(while_inserting) <= store_module.LOOKUP_BATCH + 10, while_inserting


def test_a_reimport_names_the_runs_stored_with_other_values_in_file_order(tmp_path):
    """Runs stored before are looked up a batch at a time (they were all loaded as RunRecords
    at once: 880 MB to import 100k stored runs again)."""
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    try:
        store.add_many("t", [make_report(f"r{i}") for i in range(6)])
        again = [make_report("r5", loss=2.6), make_report("new"), make_report("r1"),
                 make_report("r2", loss=2.7), make_report("r5", loss=2.6)]
        result = store_runs(store, "t", iter(again))
    finally:
        store.close()
    assert (result.read, result.added, result.already_stored) == (5, 1, 4)
    assert result.conflicting == ("r5", "r2")
