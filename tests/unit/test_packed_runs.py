"""Imported runs kept packed between reading and storing (benchmark_db/importers/packed.py),
and the reading that goes with it: rows read as they are checked, errors as before."""

import json

import pytest

from benchmark_db.errors import InvalidArgument
from benchmark_db.importers import read_file, read_runs
from benchmark_db.importers.packed import PackedRuns
from benchmark_db.records import RunReport, resolve_spec, validated
from tests.factories import write_csv

HEADER = ["run_id", "n_params", "n_tokens", "lr", "batch_size_tokens", "weight_decay",
          "final_loss"]


def full_report(run_id: str = "a", **outcome) -> RunReport:
    """A report with every field away from its default, enums included."""
    return validated(RunReport, {
        "run_id": run_id,
        "spec": resolve_spec(n_params=8e9, n_active_params=1e9, n_tokens=2e11, seq_len=4096,
                             architecture="moe", optimizer="adamw", weight_bits=4),
        "hyperparameters": {"lr": 1.5e-3, "batch_size_tokens": 4194304, "weight_decay": 0.1,
                            "qat_fraction": 0.3},
        "outcome": outcome or {"status": "diverged", "final_loss": 7.5},
        "metadata": {"team": "moe", "note": "two\nlines"},
        "recommendation_id": "rec-1", "trial_id": "3-4", "source": "import:jsonl",
    })


def test_every_field_comes_back_equal_and_the_runs_can_be_read_again():
    runs = PackedRuns()
    added = [full_report("a"), full_report("b", status="completed", final_loss=2.25),
             full_report("c", status="failed")]
    assert [runs.add(n, report) for n, report in enumerate(added, 2)] == [0, 1, 2]
    assert list(runs) == added and list(runs) == added and len(runs) == 3
    back = list(runs)[0]
    assert back.spec.architecture.value == "moe" and back.outcome.status.value == "diverged"
    assert runs.row_number(2) == 4


def test_finish_gets_the_flag_kept_with_each_run():
    seen = []
    runs = PackedRuns(finish=lambda report, flag: seen.append(flag) or report)
    runs.add(2, full_report("a"), True)
    runs.add(3, full_report("b"))
    assert list(runs) == [full_report("a"), full_report("b")] and seen == [True, False]


def test_runs_are_the_same_as_their_models_compare():
    runs = PackedRuns()
    first = full_report()
    reordered = first.model_copy(update={"metadata": dict(reversed(first.metadata.items()))})
    other = first.model_copy(update={"recommendation_id": "rec-2"})
    for report in (first, reordered, first, other):
        runs.add(2, report)
    assert reordered == first and runs.same_run(0, 1) and runs.same_run(0, 2)
    assert not runs.same_run(0, 3)


def test_a_repeated_run_id_with_labels_in_another_order_is_one_run(tmp_path):
    """Two JSONL lines of one run, whose metadata keys come in another order: the same run (as
    the models compare), read twice; another loss under the same id names the first row."""
    row = {"run_id": "a", "n_params": 1e9, "n_tokens": 2e10, "lr": 1e-3,
           "batch_size_tokens": 1e6, "weight_decay": 0.1, "final_loss": 2.5,
           "metadata": {"x": "1", "y": "2"}}
    again = {**row, "metadata": {"y": "2", "x": "1"}}
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (row, again)) + "\n")
    assert [r.run_id for r in read_runs(path, "jsonl")] == ["a", "a"]
    path.write_text("\n".join(json.dumps(r) for r in (row, again, {**row, "final_loss": 2.6}))
                    + "\n")
    with pytest.raises(InvalidArgument) as exc:
        read_runs(path, "jsonl")
    assert str(exc.value) == "row 3: run_id: 'a' is also the id of row 1, which has other values"


def test_a_row_error_gives_way_to_a_broken_row_further_down(tmp_path):
    """The rows are read as they are checked, but a file whose row 3 has a bad lr and whose
    row 5 has a cell too few is still refused for its row 5, as when the file was read whole
    before its rows were checked; without the broken row, row 3's error is the one."""
    good = ["a", "1e9", "2e10", "1e-3", "1e6", "0.1", "2.5"]
    bad_lr = ["b", "1e9", "2e10", "-1", "1e6", "0.1", "2.5"]
    rows = [good, bad_lr, ["c", *good[1:]]]
    path = write_csv(tmp_path / "r.csv", HEADER, [*rows, good[:-1]])
    with pytest.raises(InvalidArgument) as exc:
        read_runs(path, "csv")
    assert str(exc.value) == "row 5: has 6 cells, the header has 7"
    path = write_csv(tmp_path / "r.csv", HEADER, rows)
    with pytest.raises(InvalidArgument) as exc:
        read_runs(path, "csv")
    assert str(exc.value).startswith("row 3: lr: ")


def test_a_bad_header_still_gives_way_to_a_broken_row(tmp_path):
    path = write_csv(tmp_path / "r.csv", [*HEADER[:-1], "final_los"],
                     [["a", "1e9", "2e10", "1e-3", "1e6", "0.1", "2.5"], ["b", "1e9"]])
    with pytest.raises(InvalidArgument) as exc:
        read_runs(path, "csv")
    assert str(exc.value) == "row 3: has 2 cells, the header has 7"


def test_read_file_keeps_the_runs_packed(tmp_path):
    path = write_csv(tmp_path / "r.csv", HEADER, [[f"r{i}", "1e9", "2e10", "1e-3", "1e6", "0.1",
                                                   "2.5"] for i in range(3)])
    runs = read_file(path, "csv")
    assert isinstance(runs, PackedRuns) and len(runs) == 3
    assert list(runs) == read_runs(path, "csv")
