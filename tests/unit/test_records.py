import pytest

from benchmark_db.errors import InvalidArgument
from benchmark_db.records import RunReport, resolve_spec, validated
from tests.factories import make_report


def fields_of(exc_info) -> list[str]:
    return [v.field for v in exc_info.value.violations]


def test_any_two_sizes_determine_the_third():
    by_tokens = resolve_spec(n_params=1e9, n_tokens=2e10)
    assert by_tokens.compute_flops == pytest.approx(1.2e20)
    assert resolve_spec(n_params=1e9, compute_flops=1.2e20).n_tokens == pytest.approx(2e10)
    assert resolve_spec(n_tokens=2e10, compute_flops=1.2e20).n_params == pytest.approx(1e9)
    assert resolve_spec(n_params=1e9, n_tokens=2e10, compute_flops=1.2e20) == by_tokens


def test_moe_compute_uses_active_params():
    s = resolve_spec(n_params=8e9, n_active_params=1e9, compute_flops=1.2e20, architecture="moe")
    assert s.n_tokens == pytest.approx(2e10)


def test_fewer_active_parameters_than_parameters_is_a_mixture_of_experts():
    """Left out, the architecture follows the sizes: such a spec was taken for a dense one (no
    MoE warning, another study key than the same model given as moe)."""
    assert resolve_spec(n_params=8e9, n_active_params=1e9, n_tokens=1e10).architecture == "moe"
    assert resolve_spec(n_params=8e9, n_active_params=8e9, n_tokens=1e10).architecture == "dense"
    assert resolve_spec(n_params=8e9, n_tokens=1e10).architecture == "dense"


def test_active_parameters_alone_are_a_dense_model_only_when_it_says_so():
    """--active-params without --params was taken for a dense model of that size, where the
    guide says active parameters imply a mixture of experts."""
    for architecture in (None, "moe"):
        with pytest.raises(InvalidArgument) as exc:
            resolve_spec(n_active_params=1e9, n_tokens=2e11, architecture=architecture)
        assert fields_of(exc) == ["spec.n_params"]
        assert "required with n_active_params" in str(exc.value)
    dense = resolve_spec(n_active_params=1e9, n_tokens=2e11, architecture="dense")
    assert (dense.n_params, dense.architecture) == (1e9, "dense")


def test_a_run_with_a_batch_of_less_than_one_sequence_is_refused_but_loads_if_stored():
    """Pins refused such a batch; a report and an import took it."""
    from benchmark_db.records import STORED

    with pytest.raises(InvalidArgument) as exc:
        make_report(batch=100)
    assert fields_of(exc) == ["hyperparameters.batch_size_tokens"]
    assert "less than one sequence of seq_len 2048" in str(exc.value)
    stored = make_report().model_dump()
    stored["hyperparameters"]["batch_size_tokens"] = 100
    assert RunReport.model_validate(stored, context=STORED).hyperparameters.batch_size_tokens == 100


def test_a_dense_spec_stored_with_fewer_active_parameters_still_loads():
    from benchmark_db.records import STORED, TrainingSpec

    stored = {"n_params": 8e9, "n_active_params": 1e9, "n_tokens": 1e10, "architecture": "dense"}
    assert TrainingSpec.model_validate(stored, context=STORED).n_active_params == 1e9


@pytest.mark.parametrize("kwargs, field", [
    ({"n_params": -1.0, "n_tokens": 1e10}, "spec.n_params"),
    ({"n_params": 0.0, "n_tokens": 1e10}, "spec.n_params"),
    ({"n_params": float("nan"), "n_tokens": 1e10}, "spec.n_params"),
    ({"n_params": 1e9, "n_tokens": float("inf")}, "spec.n_tokens"),
    ({"n_params": 1e9}, "spec.n_tokens"),
    ({"n_params": 1e9, "n_tokens": 1e10, "compute_flops": 1e25}, "spec.compute_flops"),
    ({"n_params": 1e9, "n_tokens": 1e10, "architecture": "rnn"}, "spec.architecture"),
    ({"n_params": 1e9, "n_tokens": 1e10, "optimizer": "sgd"}, "spec.optimizer"),
    ({"n_params": 1e9, "n_tokens": 1e10, "seq_len": 0}, "spec.seq_len"),
    ({"n_params": 1e9, "n_tokens": 1e10, "weight_bits": 0}, "spec.weight_bits"),
    ({"n_params": 1e30, "n_tokens": 1e10}, "spec.n_params"),
    ({"n_params": 1e9, "n_active_params": 2e9, "n_tokens": 1e10, "architecture": "moe"},
     "spec.n_active_params"),
    ({"n_params": 8e9, "n_active_params": 1e9, "n_tokens": 1e10, "architecture": "dense"},
     "spec.n_active_params"),
])
def test_bad_specs_name_the_field(kwargs, field):
    with pytest.raises(InvalidArgument) as exc:
        resolve_spec(**kwargs)
    assert fields_of(exc) == [field]


def test_report_rejects_batch_larger_than_tokens():
    with pytest.raises(InvalidArgument) as exc:
        make_report(n_tokens=1e6, batch=2e6)
    assert fields_of(exc) == ["hyperparameters.batch_size_tokens"]


def test_completed_run_needs_a_loss_but_diverged_does_not():
    good = make_report(status="diverged")
    assert good.outcome.final_loss is None
    data = good.model_dump()
    data["outcome"] = {"status": "completed"}
    with pytest.raises(InvalidArgument) as exc:
        validated(RunReport, data)
    assert fields_of(exc) == ["outcome.final_loss"]


@pytest.mark.parametrize("metadata", [{"": "x"}, {"k" * 300: "x"}, {"k": "v" * 5000},
                                      {f"k{i}": "v" for i in range(65)}])
def test_metadata_limits(metadata):
    with pytest.raises(InvalidArgument) as exc:
        make_report(metadata=metadata)
    assert fields_of(exc)[0].startswith("metadata")


@pytest.mark.parametrize("run_id", ["", "x" * 201, "tab\there"])
def test_run_id_must_be_a_printable_bounded_string(run_id):
    with pytest.raises(InvalidArgument) as exc:
        make_report(run_id=run_id)
    assert fields_of(exc) == ["run_id"]


def test_diverged_run_may_carry_a_huge_loss_but_completed_may_not():
    assert make_report(status="diverged").outcome.status == "diverged"
    from benchmark_db.records import RunOutcome
    assert RunOutcome(status="diverged", final_loss=1e6).final_loss == 1e6
    with pytest.raises(InvalidArgument) as exc:
        validated(RunOutcome, {"status": "completed", "final_loss": 5e3}, "outcome")
    assert fields_of(exc) == ["outcome.final_loss"]


@pytest.mark.parametrize("field, value, named", [
    ("recommendation_id", "rec\x00", "recommendation_id"),
    ("recommendation_id", "rec\n", "recommendation_id"),  # a control character, as in run_id
    ("trial_id", "1-\x002", "trial_id"),
    ("metadata", {"note": "a\x00b"}, "metadata['note']"),
    ("metadata", {"no\x00te": "v"}, "metadata"),
])
def test_text_the_database_cannot_store_is_refused_naming_the_field(field, value, named):
    """PostgreSQL text holds no NUL: such a report crashed the store (INTERNAL, a traceback
    from `hparamrec import`), and SQLite stored it, so the run could not move to PostgreSQL."""
    with pytest.raises(InvalidArgument, match="control character|NUL character") as exc:
        make_report(**{field: value})
    assert fields_of(exc) == [named]


def test_runs_stored_with_such_text_before_the_rule_still_load():
    from benchmark_db.records import STORED, RunRecord

    stored = {**make_report().model_dump(), "recommendation_id": "rec\x00", "trial_id": "\x00",
              "metadata": {"no\x00te": "a\x00b"}, "tenant": "default",
              "created_at": "2025-01-01T00:00:00Z"}
    assert RunRecord.model_validate(stored, context=STORED).recommendation_id == "rec\x00"


@pytest.mark.parametrize("tenant", ["", "-x", "a" * 101, "a b", "ten/ant", "team\n", "te\x00am"])
def test_bad_tenants_are_rejected(tenant):
    from benchmark_db.records import check_tenant
    with pytest.raises(InvalidArgument):
        check_tenant(tenant)


def test_architecture_and_optimizer_are_taken_in_any_case():
    """The importers took "MoE"; the API and the CLI refused it ("Input should be 'dense' or
    'moe'")."""
    spec = resolve_spec(n_params=8e9, n_active_params=1e9, n_tokens=1e11,
                        architecture="MoE", optimizer="AdamW")
    assert (spec.architecture.value, spec.optimizer.value) == ("moe", "adamw")
    assert resolve_spec(n_active_params=1e9, n_tokens=1e11,
                        architecture="DENSE").n_params == 1e9
    with pytest.raises(InvalidArgument, match="architecture"):  # blank is not "unset"
        resolve_spec(n_params=1e9, n_tokens=1e11, architecture=" ")
