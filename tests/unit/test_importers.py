"""Importers: Step Law sweeps and the generic CSV/JSONL format, on small files built here."""

import json
import math
import re
from pathlib import Path

import pytest

from benchmark_db.errors import InvalidArgument
from benchmark_db.importers import FORMATS, read_runs
from benchmark_db.importers.rows import PROGRESS_EVERY
from clients.cli_admin import IMPORT_FORMATS
from tests.factories import write_csv

DOC = Path(__file__).parents[2] / "docs" / "import-format.md"
STEPLAW_HEADER = ["h", "ffnh", "numh", "numl", "lr", "bs", "ti", "loss", "smooth loss",
                  "exp_name", "D", "N", "D/N"]


def steplaw_row(lr, bs, smooth, *, name=None, n=2e8, d=4e9, loss=None):
    name = name or f"run_lr{lr}_bs{bs}_n{n:g}_d{d:g}"
    return [960, 9368, 15, 7, lr, bs, 100, smooth if loss is None else loss, smooth, name,
            int(d), int(n), d / n]


def write_steplaw(tmp_path, rows, header=STEPLAW_HEADER) -> Path:
    return write_csv(tmp_path / "steplaw.csv", header, rows)


def violation_fields(exc_info) -> list[str]:
    return [v.field for v in exc_info.value.violations]


def by_id(reports) -> dict:
    return {r.run_id: r for r in reports}


# --- Step Law -----------------------------------------------------------------------------

def test_steplaw_dense_row_becomes_a_full_record(tmp_path):
    path = write_steplaw(tmp_path, [steplaw_row(1e-3, 256, 2.5, name="a", loss=2.51)])
    [run] = read_runs(path, "steplaw")
    assert run.run_id == "steplaw:a" and run.source == "import:steplaw"
    assert (run.spec.n_params, run.spec.n_active_params, run.spec.n_tokens) == (2e8, 2e8, 4e9)
    assert run.spec.seq_len == 2048 and run.spec.architecture == "dense"
    assert run.spec.weight_bits == 16
    assert run.hyperparameters.batch_size_tokens == 256 * 2048
    assert run.hyperparameters.weight_decay == 0.1 and run.hyperparameters.qat_fraction == 0
    assert run.outcome.status == "completed" and run.outcome.final_loss == 2.5
    assert run.metadata == {"h": "960", "ffnh": "9368", "numh": "15", "numl": "7", "ti": "100",
                            "loss": "2.51", "exp_name": "a"}


def test_steplaw_moe_columns_give_active_params_and_sequence_length(tmp_path):
    header = [*STEPLAW_HEADER, "Na", "seq_len", "E"]
    path = write_steplaw(tmp_path, [steplaw_row(1e-3, 64, 2.4, name="m") + [int(5e7), 4096, 16]],
                         header)
    [run] = read_runs(path, "steplaw")
    assert run.spec.architecture == "moe"
    assert (run.spec.n_params, run.spec.n_active_params) == (2e8, 5e7)
    assert run.spec.seq_len == 4096 and run.hyperparameters.batch_size_tokens == 64 * 4096
    assert run.metadata["E"] == "16"  # columns the importer does not know are kept


def test_steplaw_divergence_is_relative_to_the_runs_own_group(tmp_path):
    rows = [
        steplaw_row(1e-3, 256, 2.0, name="best"),
        steplaw_row(2e-3, 256, 2.9, name="worse-but-converged"),  # < 1.5 x 2.0
        steplaw_row(4e-3, 256, 3.1, name="blew-up"),              # > 1.5 x 2.0
        steplaw_row(8e-3, 256, float("nan"), name="nan"),
        steplaw_row(9e-3, 256, 2.2, name="raw-inf", loss=float("inf")),
        # Another group, whose best is 3.0: 4.0 is converged there.
        steplaw_row(1e-3, 256, 3.0, name="other-best", d=1e9),
        steplaw_row(2e-3, 256, 4.0, name="other-converged", d=1e9),
    ]
    runs = by_id(read_runs(write_steplaw(tmp_path, rows), "steplaw"))
    status = {k.removeprefix("steplaw:"): r.outcome.status for k, r in runs.items()}
    assert status == {"best": "completed", "worse-but-converged": "completed",
                      "blew-up": "diverged", "nan": "diverged", "raw-inf": "diverged",
                      "other-best": "completed", "other-converged": "completed"}
    assert runs["steplaw:blew-up"].outcome.final_loss == 3.1  # the observed loss is kept
    assert runs["steplaw:nan"].outcome.final_loss is None
    assert runs["steplaw:raw-inf"].metadata["loss"] == "inf"


def test_steplaw_groups_moe_runs_by_active_params_too(tmp_path):
    header = [*STEPLAW_HEADER, "Na"]
    rows = [steplaw_row(1e-3, 64, 2.0, name="small-active") + [int(5e7)],
            steplaw_row(1e-3, 64, 3.5, name="large-active") + [int(1e8)]]
    runs = by_id(read_runs(write_steplaw(tmp_path, rows, header), "steplaw"))
    assert runs["steplaw:large-active"].outcome.status == "completed"


def test_steplaw_duplicate_names_fall_back_to_content_hashes(tmp_path):
    rows = [steplaw_row(1e-3, 256, 2.5, name="dup"), steplaw_row(2e-3, 256, 2.6, name="dup"),
            steplaw_row(3e-3, 256, 2.7, name="unique")]
    path = write_steplaw(tmp_path, rows)
    ids = [r.run_id for r in read_runs(path, "steplaw")]
    assert ids[2] == "steplaw:unique"
    assert all(re.fullmatch(r"steplaw:sha256:[0-9a-f]{32}", i) for i in ids[:2])
    assert ids[0] != ids[1]
    assert [r.run_id for r in read_runs(path, "steplaw")] == ids  # deterministic


def test_steplaw_rows_repeated_whole_keep_their_names(tmp_path):
    """A file concatenated with itself: every run was stored under steplaw:<exp_name> before,
    and switching the repeated names to content hashes stored them all a second time."""
    rows = [steplaw_row(1e-3, 256, 2.5, name="a"), steplaw_row(2e-3, 256, 2.6, name="b")]
    ids = [r.run_id for r in read_runs(write_steplaw(tmp_path, rows + rows), "steplaw")]
    assert ids == ["steplaw:a", "steplaw:b", "steplaw:a", "steplaw:b"]


def test_steplaw_moe_row_without_active_params_is_refused(tmp_path):
    header = STEPLAW_HEADER + ["Na"]
    rows = [steplaw_row(1e-3, 256, 2.5, name="a") + [int(5e7)],
            steplaw_row(2e-3, 256, 2.6, name="b") + [""]]
    with pytest.raises(InvalidArgument) as exc:
        read_runs(write_steplaw(tmp_path, rows, header), "steplaw")
    assert violation_fields(exc) == ["row 3: Na"]


def test_steplaw_missing_column_is_named(tmp_path):
    header = [c for c in STEPLAW_HEADER if c != "smooth loss"]
    path = write_csv(tmp_path / "s.csv", header, [])
    with pytest.raises(InvalidArgument) as exc:
        read_runs(path, "steplaw")
    assert violation_fields(exc) == ["row 1: smooth loss"]


@pytest.mark.parametrize("column, value, field", [
    ("lr", "-0.001", "row 3: lr"),
    ("lr", "fast", "row 3: lr"),
    ("bs", "1e9", "row 3: bs"),  # batch larger than the run's tokens
    ("smooth loss", "", "row 3: smooth loss"),
    ("N", "0", "row 3: N"),
])
def test_steplaw_bad_cell_names_row_and_file_column(tmp_path, column, value, field):
    rows = [steplaw_row(1e-3, 256, 2.5, name="ok"), steplaw_row(2e-3, 256, 2.6, name="bad")]
    rows[1][STEPLAW_HEADER.index(column)] = value
    with pytest.raises(InvalidArgument) as exc:
        read_runs(write_steplaw(tmp_path, rows), "steplaw")
    assert violation_fields(exc) == [field]
    if column == "smooth loss":  # pandas writes NaN so: say how to write a blown-up run
        assert "write nan for a run whose loss blew up" in str(exc.value)


# --- generic CSV and JSONL ----------------------------------------------------------------

GENERIC_HEADER = ["run_id", "n_params", "n_tokens", "compute_flops", "lr", "batch_size_tokens",
                  "weight_decay", "final_loss", "status", "diverged", "metadata.cluster"]


def test_generic_csv_reads_every_field_kind(tmp_path):
    path = write_csv(tmp_path / "runs.csv", GENERIC_HEADER, [
        ["a", "1e9", "2e10", "", "1e-3", "1048576", "0.1", "2.5", "", "", "x1"],
        ["b", "1e9", "", "1.2e20", "2e-3", "1048576", "0.1", "nan", "", "", ""],
        ["c", "1e9", "2e10", "", "3e-3", "1048576", "0.1", "3.9", "", "true", "x1"],
        ["d", "1e9", "2e10", "", "3e-3", "1048576", "0.1", "", "failed", "", ""],
    ])
    runs = by_id(read_runs(path, "csv"))
    assert runs["a"].outcome.status == "completed" and runs["a"].metadata == {"cluster": "x1"}
    assert runs["a"].source == "import:csv"
    assert runs["b"].spec.n_tokens == pytest.approx(2e10)  # from compute_flops
    assert runs["b"].outcome.status == "diverged" and runs["b"].outcome.final_loss is None
    assert runs["b"].metadata == {}
    assert runs["c"].outcome.status == "diverged" and runs["c"].outcome.final_loss == 3.9
    assert runs["d"].outcome.status == "failed" and runs["d"].outcome.final_loss is None


def test_generic_jsonl_reads_moe_metadata_and_quantization(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps({
        "run_id": "m", "n_params": 8e9, "n_active_params": 1e9, "n_tokens": 2e11,
        "architecture": "moe", "seq_len": 4096.0, "weight_bits": 4, "lr": 1.5e-3,
        "batch_size_tokens": 4194304, "weight_decay": 0.1, "qat_fraction": 0.3,
        "final_loss": 2.18, "metadata": {"team": "moe"}, "recommendation_id": "rec-1",
    }) + "\n\n")
    [run] = read_runs(path, "jsonl")
    assert run.spec.n_active_params == 1e9 and run.spec.architecture == "moe"
    assert run.spec.seq_len == 4096 and run.spec.weight_bits == 4
    assert run.hyperparameters.qat_fraction == 0.3
    assert run.metadata == {"team": "moe"} and run.recommendation_id == "rec-1"
    assert run.source == "import:jsonl"


def test_runs_without_ids_get_the_same_content_id_in_csv_and_jsonl(tmp_path):
    row = {"n_params": 1e9, "n_tokens": 2e10, "lr": 1e-3, "batch_size_tokens": 1048576,
           "weight_decay": 0.1, "final_loss": 2.5}
    csv_path = write_csv(tmp_path / "r.csv", list(row), [list(row.values())])
    jsonl_path = tmp_path / "r.jsonl"
    jsonl_path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "final_loss": 2.6}) + "\n")
    [from_csv] = read_runs(csv_path, "csv")
    from_jsonl = read_runs(jsonl_path, "jsonl")
    assert re.fullmatch(r"sha256:[0-9a-f]{32}", from_csv.run_id)
    assert from_csv.run_id == from_jsonl[0].run_id != from_jsonl[1].run_id
    assert [r.run_id for r in read_runs(jsonl_path, "jsonl")] == [r.run_id for r in from_jsonl]


def test_unknown_csv_column_is_an_error_naming_it(tmp_path):
    path = write_csv(tmp_path / "r.csv", ["n_params", "n_tokens", "lrr"], [["1e9", "2e10", "1e-3"]])
    with pytest.raises(InvalidArgument, match=r"did you mean 'lr'\?") as exc:
        read_runs(path, "csv")
    assert violation_fields(exc) == ["row 1: lrr"]


def test_a_step_law_file_read_as_generic_csv_says_which_format_it_is(tmp_path):
    path = write_steplaw(tmp_path, [steplaw_row(1e-3, 256, 2.5)])
    with pytest.raises(InvalidArgument, match="import it with --format steplaw") as exc:
        read_runs(path, "csv")
    assert violation_fields(exc) == ["row 1"]  # one error, not one per column


def test_unknown_jsonl_key_is_an_error_naming_row_and_key(tmp_path):
    good = {"n_params": 1e9, "n_tokens": 2e10, "lr": 1e-3, "batch_size_tokens": 1e6,
            "weight_decay": 0.1, "final_loss": 2.5}
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "wieght_decay": 0.1}) + "\n")
    with pytest.raises(InvalidArgument, match=r"did you mean 'weight_decay'\?") as exc:
        read_runs(path, "jsonl")
    assert violation_fields(exc) == ["row 2: wieght_decay"]


@pytest.mark.parametrize("column, value, field", [
    ("lr", "-1e-3", "row 3: lr"),
    ("lr", "abc", "row 3: lr"),
    ("weight_decay", "", "row 3: weight_decay"),  # required
    ("final_loss", "", "row 3: final_loss"),  # required when completed
    ("n_tokens", "", "row 3: n_tokens"),  # only one size left
    ("batch_size_tokens", "1e11", "row 3: batch_size_tokens"),  # above n_tokens
    ("status", "done", "row 3: status"),
    ("diverged", "maybe", "row 3: diverged"),
    ("run_id", "a", "row 3: run_id"),  # row 2's id, with other values
])
def test_bad_csv_value_names_row_and_column(tmp_path, column, value, field):
    header = ["run_id", "n_params", "n_tokens", "lr", "batch_size_tokens", "weight_decay",
              "final_loss", "status", "diverged"]
    rows = [["a", "1e9", "2e10", "1e-3", "1e6", "0.1", "2.5", "", ""],
            ["b", "1e9", "2e10", "2e-3", "1e6", "0.1", "2.6", "", ""]]
    rows[1][header.index(column)] = value
    with pytest.raises(InvalidArgument) as exc:
        read_runs(write_csv(tmp_path / "r.csv", header, rows), "csv")
    assert violation_fields(exc) == [field]


def test_error_message_reads_row_column_reason(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"n_params": 1e9, "n_tokens": 2e10, "lr": 0,
                                "batch_size_tokens": 1e6, "weight_decay": 0.1,
                                "final_loss": 2.5}) + "\n")
    with pytest.raises(InvalidArgument, match=r"^row 1: lr: Input should be greater than 0"):
        read_runs(path, "jsonl")


@pytest.mark.parametrize("line, field", [
    ('{"n_params": 1e9,', "row 1"),
    ('[1, 2]', "row 1"),
    ('[' * 100_000 + ']' * 100_000, "row 1"),  # deeper than the parser's recursion
    ('{"n_params": 1e9, "n_tokens": 2e10, "lr": 1e-3, "batch_size_tokens": 1e6, '
     '"weight_decay": 0.1, "final_loss": 2.5, "metadata": {"seed": [3]}}', "row 1: metadata.seed"),
    ('{"n_params": 1e9, "n_tokens": 2e10, "lr": 1e-3, "batch_size_tokens": 1e6, '
     '"weight_decay": 0.1, "final_loss": 2.5, "status": "completed", "diverged": true}',
     "row 1: diverged"),
    ('{"n_params": 1e9, "n_tokens": 2e10, "lr": 1e-3, "batch_size_tokens": 1e6, '
     '"weight_decay": 0.1, "qat_fraction": 0.5, "final_loss": 2.5}', "row 1: qat_fraction"),
    # a 400-digit integer gave a traceback; a key given twice silently took the last value
    ('{"run_id": "j", "n_params": 1e9, "n_tokens": 1' + "0" * 400 + "}", "row 1: n_tokens"),
    ('{"n_params": 1e9, "n_tokens": 2e10, "lr": 1e-3, "batch_size_tokens": 1e6, '
     '"weight_decay": 0.1, "final_loss": 2.5, "final_loss": NaN}', "row 1: final_loss"),
])
def test_bad_jsonl_line_names_the_row(tmp_path, line, field):
    path = tmp_path / "r.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(InvalidArgument) as exc:
        read_runs(path, "jsonl")
    assert violation_fields(exc) == [field]


# --- trial ids: kept as a label, never as a claim on the target database's trials -----------

TRIAL_ROW = {"n_params": 1e9, "n_tokens": 2e10, "lr": 1e-3, "batch_size_tokens": 1e6,
             "weight_decay": 0.1, "final_loss": 2.5}


def test_a_trial_id_is_kept_as_the_imported_trial_id_label(tmp_path):
    path = write_csv(tmp_path / "r.csv", ["run_id", *TRIAL_ROW, "trial_id", "metadata.cluster"],
                     [["t", *TRIAL_ROW.values(), "3-1", "a100"],
                      ["own", *TRIAL_ROW.values(), "", ""]])
    runs = by_id(read_runs(path, "csv"))
    assert runs["t"].trial_id == "" and runs["own"].trial_id == ""
    assert runs["t"].metadata == {"cluster": "a100", "imported_trial_id": "3-1"}
    assert runs["own"].metadata == {}


def test_a_trial_id_and_its_label_are_one_run_and_must_agree(tmp_path):
    as_column, as_label = ({**TRIAL_ROW, "trial_id": "3-1"},
                           {**TRIAL_ROW, "metadata": {"imported_trial_id": "3-1"}})
    both = {**as_column, "metadata": {"imported_trial_id": "3-1"}}
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in (as_column, as_label, both)))
    first, second, third = read_runs(path, "jsonl")
    assert first == second == third  # the same content id: importing it again adds nothing
    path.write_text(json.dumps({**both, "trial_id": "3-2"}) + "\n")
    with pytest.raises(InvalidArgument, match="contradicts metadata imported_trial_id") as exc:
        read_runs(path, "jsonl")
    assert violation_fields(exc) == ["row 1: trial_id"]


def test_a_trial_id_that_is_not_a_string_names_the_column(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({**TRIAL_ROW, "trial_id": 7}) + "\n")
    with pytest.raises(InvalidArgument) as exc:
        read_runs(path, "jsonl")
    assert violation_fields(exc) == ["row 1: trial_id"]


LOSS_ONLY_HEADER = ["run_id", "n_params", "n_tokens", "lr", "batch_size_tokens", "weight_decay",
                    "final_loss"]


def test_a_loss_far_above_its_groups_best_is_diverged_unless_the_row_says(tmp_path):
    rows = [["best", "1e9", "2e10", "1e-3", "1e6", "0.1", "2.5"],
            ["near", "1e9", "2e10", "3e-3", "1e6", "0.1", "3.7"],
            ["blown", "1e9", "2e10", "3e-2", "1e6", "0.1", "9.7"],
            ["other-size", "2e9", "2e10", "3e-2", "1e6", "0.1", "9.7"]]
    runs = by_id(read_runs(write_csv(tmp_path / "r.csv", LOSS_ONLY_HEADER, rows), "csv"))
    status = {run_id: run.outcome.status for run_id, run in runs.items()}
    assert status == {"best": "completed", "near": "completed", "blown": "diverged",
                      "other-size": "completed"}
    assert runs["blown"].outcome.final_loss == 9.7  # kept, as a diverged run's finite loss

    said = [row + ["completed"] for row in rows]
    runs = read_runs(write_csv(tmp_path / "s.csv", LOSS_ONLY_HEADER + ["status"], said), "csv")
    assert all(run.outcome.status == "completed" for run in runs)


def test_a_loss_above_any_completed_runs_is_diverged_unless_the_row_says_completed(tmp_path):
    """1500 nats refused the whole file (as a completed run's loss) before the group rule
    could call it diverged; alone in its group, no rule did."""
    rows = [["best", "1e9", "2e10", "1e-3", "1e6", "0.1", "2.5"],
            ["near", "1e9", "2e10", "3e-3", "1e6", "0.1", "3.7"],
            ["blown", "1e9", "2e10", "3e-2", "1e6", "0.1", "9.7"],
            ["huge", "1e9", "2e10", "1e-1", "1e6", "0.1", "1500"],
            ["huge-alone", "2e9", "2e10", "1e-1", "1e6", "0.1", "1500"]]
    runs = by_id(read_runs(write_csv(tmp_path / "r.csv", LOSS_ONLY_HEADER, rows), "csv"))
    status = {run_id: run.outcome.status for run_id, run in runs.items()}
    assert status == {"best": "completed", "near": "completed", "blown": "diverged",
                      "huge": "diverged", "huge-alone": "diverged"}
    assert runs["huge"].outcome.final_loss == 1500  # kept, as a diverged run's finite loss

    said = [rows[0] + ["completed"], rows[3] + ["completed"]]
    with pytest.raises(InvalidArgument, match="report it as diverged") as exc:
        read_runs(write_csv(tmp_path / "s.csv", LOSS_ONLY_HEADER + ["status"], said), "csv")
    assert violation_fields(exc) == ["row 3: final_loss"]


def test_steplaw_a_loss_above_any_completed_runs_is_diverged(tmp_path):
    """As in the generic format: alone in its group, the 1500 nats are the group's best."""
    rows = [steplaw_row(1e-3, 256, 2.5, name="best"), steplaw_row(1e-1, 256, 1500, name="huge"),
            steplaw_row(1e-1, 256, 1500, name="huge-alone", d=1e9)]
    runs = by_id(read_runs(write_steplaw(tmp_path, rows), "steplaw"))
    status = {k.removeprefix("steplaw:"): r.outcome.status for k, r in runs.items()}
    assert status == {"best": "completed", "huge": "diverged", "huge-alone": "diverged"}
    assert runs["steplaw:huge-alone"].outcome.final_loss == 1500


JSONL_RUN = {"run_id": "j", "n_params": 1e9, "n_tokens": 2e10, "lr": 1e-3,
             "batch_size_tokens": 1048576, "weight_decay": 0.1, "final_loss": 2.5}


def test_jsonl_takes_enum_names_in_any_case_and_numeric_labels(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({**JSONL_RUN, "n_active_params": 2.5e8, "architecture": "MoE",
                                "optimizer": "AdamW", "metadata": {"step": 1000, "ok": True,
                                                                   "team": "a"}}) + "\n")
    [run] = read_runs(path, "jsonl")
    assert run.spec.architecture == "moe" and run.spec.optimizer == "adamw"
    assert run.metadata == {"step": "1000", "ok": "true", "team": "a"}


def test_a_header_with_a_trailing_comma_is_named(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("run_id,n_params,\na,1e9,\n")
    with pytest.raises(InvalidArgument) as exc:
        read_runs(path, "csv")
    assert violation_fields(exc) == ["row 1"]
    assert "column 3 has no name (a trailing comma?)" in str(exc.value)


def test_identical_rows_are_one_run_read_twice(tmp_path):
    row = ["a", "1e9", "2e10", "1e-3", "1e6", "0.1", "2.5"]
    header = ["run_id", "n_params", "n_tokens", "lr", "batch_size_tokens", "weight_decay",
              "final_loss"]
    runs = read_runs(write_csv(tmp_path / "r.csv", header, [row, row]), "csv")
    assert [r.run_id for r in runs] == ["a", "a"]


def test_file_that_is_not_utf8_is_rejected(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(b"run_id,n_params\n\xff\xfe,1\n")
    with pytest.raises(InvalidArgument) as exc:
        read_runs(path, "csv")
    assert violation_fields(exc) == ["file"]


def test_unknown_format_is_rejected(tmp_path):
    with pytest.raises(InvalidArgument) as exc:
        read_runs(tmp_path / "r.parquet", "parquet")
    assert violation_fields(exc) == ["format"]


def test_progress_is_told_every_thousand_rows(tmp_path):
    header = ["n_params", "n_tokens", "lr", "batch_size_tokens", "weight_decay", "final_loss"]
    rows = [["1e9", "2e10", f"{1e-4 * (1 + i / 1000):.6g}", "1e6", "0.1", "2.5"]
            for i in range(2 * PROGRESS_EVERY + 5)]
    seen = []
    runs = read_runs(write_csv(tmp_path / "r.csv", header, rows), "csv", progress=seen.append)
    assert seen == [PROGRESS_EVERY, 2 * PROGRESS_EVERY] and len(runs) == len(rows)


def test_cli_offers_exactly_the_importer_formats():
    assert IMPORT_FORMATS == FORMATS


# --- the documented examples --------------------------------------------------------------

def doc_examples() -> dict[str, str]:
    blocks = re.findall(r"^```(\w+)\n(.*?)^```", DOC.read_text(), re.M | re.S)
    return {fmt: body for fmt, body in blocks if fmt in FORMATS}


def test_doc_has_an_example_of_each_format():
    assert set(doc_examples()) == set(FORMATS)


def test_doc_examples_import_as_described(tmp_path):
    examples = doc_examples()
    runs = {}
    for fmt, body in examples.items():
        path = tmp_path / f"example.{fmt}"
        path.write_text(body)
        runs[fmt] = read_runs(path, fmt)

    csv_runs = runs["csv"]
    assert [r.outcome.status for r in csv_runs] == ["completed", "diverged", "failed", "completed"]
    assert csv_runs[1].spec.n_tokens == pytest.approx(1e11)
    assert csv_runs[0].metadata == {"cluster": "a100"}
    assert csv_runs[3].run_id.startswith("sha256:")

    moe, quantized, blown_up = runs["jsonl"]
    assert moe.spec.architecture == "moe" and moe.metadata == {"team": "moe", "commit": "ab12f"}
    assert quantized.spec.weight_bits == 4 and quantized.hyperparameters.qat_fraction == 0.3
    assert quantized.metadata == {"imported_trial_id": "12-3"} and quantized.trial_id == ""
    assert blown_up.outcome.status == "diverged" and blown_up.run_id.startswith("sha256:")

    assert [r.outcome.status for r in runs["steplaw"]] == ["completed", "completed", "diverged"]
    assert math.isclose(runs["steplaw"][2].outcome.final_loss, 7.3381)
