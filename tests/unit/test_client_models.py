"""The client's pydantic models against the proto: complete, lossless, light to import."""

import subprocess
import sys
from datetime import UTC, datetime

import pytest
from google.protobuf import json_format
from pydantic import ValidationError

from clients import convert, models
from hparamrec.v1 import recommender_pb2 as pb


@pytest.mark.parametrize("name", sorted(convert.MODELS))
def test_every_proto_field_has_a_model_field(name):
    proto_fields = {f.name for f in getattr(pb, name).DESCRIPTOR.fields}
    model_fields = set(convert.MODELS[name].model_fields)
    assert proto_fields - model_fields == set(), f"add to clients/models.py ({name})"
    assert model_fields - proto_fields == set(), f"not in the proto ({name})"


def test_every_message_has_a_model_or_is_a_wrapper():
    messages = set(pb.DESCRIPTOR.message_types_by_name)
    missing = messages - set(convert.MODELS) - convert.WRAPPERS
    assert not missing, "give these messages a model in clients/models.py (and convert.MODELS) " \
                        f"or list them in convert.WRAPPERS: {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(convert.ENUMS))
def test_every_enum_value_has_a_member(name):
    enum = pb.DESCRIPTOR.enum_types_by_name[name]
    expected = {v.name.removeprefix(convert.enum_prefix(name)).lower() for v in enum.values}
    assert {m.value for m in convert.ENUMS[name]} == expected


def full_run() -> pb.Run:
    run = pb.Run(
        run_id="r1", spec=pb.TrainingSpec(n_params=1.3e9, n_tokens=1e11, seq_len=4096,
                                          architecture="dense", weight_bits=4),
        hyperparameters=pb.Hyperparameters(lr=1e-3, batch_size_tokens=1e6, weight_decay=0.0),
        outcome=pb.RunOutcome(status=pb.RUN_STATUS_DIVERGED),
        metadata={"cluster": "a"}, recommendation_id="rec", source="report", trial_id="t")
    run.created_at.FromDatetime(datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC))
    return run


def full_recommendation() -> pb.Recommendation:
    rec = pb.Recommendation(
        lr=1e-3, lr_interval=pb.Interval(lo=5e-4, hi=2e-3), batch_size_tokens=2**20,
        batch_size_tokens_interval=pb.Interval(lo=2**19, hi=2**21), batch_size_sequences=512,
        weight_decay=0.1, weight_decay_interval=pb.Interval(lo=0.05, hi=0.2),
        qat_fraction_interval=pb.Interval(), predicted_loss=2.4,
        predicted_loss_interval=pb.Interval(lo=2.3, hi=2.5),
        sources=[pb.Source(field="lr", name="steplaw_lr", version="v", detail="eta = ...")],
        warnings=["outside the fitted range"], recommendation_id="id",
        spec=pb.TrainingSpec(n_params=1e9, n_active_params=1e9, n_tokens=2e10), model_versions=["prior@1"])
    return rec


@pytest.mark.parametrize("message", [full_run(), full_recommendation(),
                                     pb.ReportRunResponse(run=full_run(), created=True),
                                     pb.ListRunsResponse(runs=[full_run(), full_run()], next_page_token="x"),
                                     pb.Pins(weight_decay=0.0)])
def test_proto_to_model_to_proto_is_lossless(message):
    model = convert.from_proto(message)
    assert convert.to_proto(model) == message
    assert convert.as_dict(model) == json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def test_unset_optional_fields_are_none_and_zero_is_a_value():
    run = convert.from_proto(full_run())
    assert run.outcome.final_loss is None
    assert run.hyperparameters.weight_decay == 0.0 and run.hyperparameters.qat_fraction is None
    assert run.spec.compute_flops is None
    assert run.outcome.status is models.RunStatus.DIVERGED
    assert run.created_at == datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def test_sizes_take_human_units_and_typos_are_errors():
    spec = models.TrainingSpec(n_params="1.3B", n_tokens="100B")
    assert (spec.n_params, spec.n_tokens) == (1.3e9, 1e11)
    assert models.Pins(batch_size_tokens="1Mi").batch_size_tokens == 2**20
    with pytest.raises(ValidationError):
        models.TrainingSpec(n_param=1e9)
    with pytest.raises(ValidationError):
        models.TrainingSpec(n_params="lots")


@pytest.mark.parametrize("field", ["seq_len", "weight_bits"])
def test_an_integer_too_large_for_its_proto_field_is_bad_input_named_by_field(field):
    from clients.client import list_runs_request, recommend_request, report_request
    from clients.errors import InvalidArgumentError

    spec = models.TrainingSpec(n_params="1.3B", n_tokens="100B", **{field: 99_999_999_999})
    hp = models.Hyperparameters(lr=1e-3, batch_size_tokens="1M", weight_decay=0.1)
    for build in (lambda: recommend_request(spec, None, "exploit"),
                  lambda: list_runs_request(10, "", spec),
                  lambda: report_request(None, {"spec": spec, "hyperparameters": hp,
                                                "outcome": models.RunOutcome.failed()})):
        with pytest.raises(InvalidArgumentError) as caught:
            build()
        assert str(caught.value) == (f"spec.{field}: out of range for a 32-bit integer "
                                     "(got 99999999999)")
        assert caught.value.exit_code == 2


def test_a_tls_ca_that_cannot_be_read_is_a_settings_error_naming_it(tmp_path):
    from clients.client import Client
    from clients.errors import ClientSettingsError, InvalidArgumentError

    with pytest.raises(ClientSettingsError) as caught:
        Client("127.0.0.1:1", tls_ca=str(tmp_path / "missing.pem"))
    assert isinstance(caught.value, InvalidArgumentError)
    assert caught.value.field_violations[0][0] == "tls_ca"
    assert str(caught.value).startswith(f"tls_ca: cannot read {tmp_path / 'missing.pem'}: ")


@pytest.mark.parametrize("target, require_port, ok", [
    ("127.0.0.1:50051", True, True), ("localhost:1", True, True), ("[::1]:443", True, True),
    ("dns:///svc.example.com:443", True, True), ("unix:/run/hparamrec.sock", True, True),
    ("svc.example.com", False, True), ("::1", False, True),
    ("127.0.0.1", True, False), ("127.0.0.1:99999", False, False), ("127.0.0.1:0", False, False),
    ("127.0.0.1:", False, False), ("host:port", False, False), ("", True, False),
    ("https://svc.example.com:443", False, False), ("http://127.0.0.1:50051", True, False),
])
def test_a_target_s_port_is_checked(target, require_port, ok):
    from clients.client import check_target
    from clients.errors import ClientSettingsError

    if ok:
        check_target(target, require_port)
    else:
        with pytest.raises(ClientSettingsError, match="target: "):
            check_target(target, require_port)


def test_coerce_takes_models_dicts_and_messages():
    expected = models.TrainingSpec(n_params=1e9, n_tokens=2e10)
    assert convert.coerce(expected, models.TrainingSpec) is expected
    assert convert.coerce({"n_params": "1B", "n_tokens": "20B"}, models.TrainingSpec) == expected
    assert convert.coerce(pb.TrainingSpec(n_params=1e9, n_tokens=2e10), models.TrainingSpec) == expected
    with pytest.raises(TypeError):
        convert.coerce(pb.Pins(), models.TrainingSpec)
    with pytest.raises(TypeError):
        convert.coerce([1e9], models.TrainingSpec)


def test_outcome_helpers():
    assert models.RunOutcome.completed(2.4).status is models.RunStatus.COMPLETED
    assert models.RunOutcome.diverged(float("nan")).final_loss is None
    assert models.RunOutcome.diverged(7.5).final_loss == 7.5
    assert models.RunOutcome.failed().final_loss is None


def test_recommendation_helpers():
    rec = convert.from_proto(full_recommendation())
    assert rec.hyperparameters == models.Hyperparameters(
        lr=1e-3, batch_size_tokens=2**20, weight_decay=0.1, qat_fraction=0.0)
    assert 1e-3 in rec.lr_interval and 1e-2 not in rec.lr_interval
    assert [s.name for s in rec.sources_for("lr")] == ["steplaw_lr"]


LIGHT = """
import sys
import clients, clients.integrations, clients.cli
client = clients.Client("127.0.0.1:1")
client.close()
heavy = {"torch", "lightgbm", "sqlalchemy", "numpy", "transformers", "lightning", "matplotlib",
         "benchmark_db", "predictor", "service"}
print(sorted(heavy & {name.split(".")[0] for name in sys.modules}))
"""


def test_importing_the_client_imports_no_heavy_package():
    out = subprocess.run([sys.executable, "-c", LIGHT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_metadata_limits_mirror_the_servers():
    """The CLI checks a report's metadata before the call with the client's copy of them."""
    from benchmark_db import records

    from service import converters

    for name in ("MAX_METADATA_ENTRIES", "MAX_METADATA_KEY_BYTES", "MAX_METADATA_VALUE_BYTES"):
        assert getattr(models, name) == getattr(records, name), name
    assert models.MAX_PREDICT_POINTS == converters.MAX_PREDICT_POINTS


def test_bad_input_caught_before_a_call_is_the_services_error_type():
    """A launcher catching HparamrecError (InvalidArgumentError) catches these too."""
    from clients import Client, InvalidArgumentError

    with Client("127.0.0.1:1", retries=0) as client:  # never called
        with pytest.raises(InvalidArgumentError) as typo:
            client.recommend({"n_paramz": 1e9, "n_tokens": 2e10})
        assert typo.value.field_violations[0][0] == "spec.n_paramz"  # as the service names it
        with pytest.raises(InvalidArgumentError, match="spec.n_params: cannot read '1.3X'"):
            client.recommend({"n_params": "1.3X", "n_tokens": "20B"})
        with pytest.raises(InvalidArgumentError, match="mode: one of exploit, explore"):
            client.recommend({"n_params": 1e9, "n_tokens": 2e10}, mode="exploer")


def test_bad_fields_are_named_by_their_path_in_the_request_before_any_call():
    """report_run's keyword fields raised pydantic's ValidationError, and the client named the
    fields without their path (lr, not points[1].lr, as the service names it)."""
    from clients import Client, InvalidArgumentError

    spec = {"n_params": 1e9, "n_tokens": 2e10}
    hp = {"lr": 1e-3, "batch_size_tokens": 1e6, "weight_decay": 0.1}
    completed = models.RunOutcome.completed(2.4)
    bad_calls = {
        "outcome.status": lambda c: c.report_run(spec=spec, hyperparameters=hp,
                                                 outcome={"status": "done"}),
        "metadata.gpus": lambda c: c.report_run(spec=spec, hyperparameters=hp, outcome=completed,
                                                metadata={"gpus": 8}),
        "spec": lambda c: c.report_run(hyperparameters=hp, outcome=completed),
        "foo": lambda c: c.report_run(spec=spec, hyperparameters=hp, outcome=completed, foo=1),
        "points[1].lr": lambda c: c.predict_loss(spec, [hp, {"lr": "abc", "batch_size_tokens": 1e6}]),
        "pins.lr": lambda c: c.recommend(spec, {"lr": "fast"}),
        # Far over the limits, these were gRPC's RESOURCE_EXHAUSTED, naming no field.
        "metadata": lambda c: c.report_run(spec=spec, hyperparameters=hp, outcome=completed,
                                           metadata={"a": "x" * 2_000_000}),
        "points": lambda c: c.predict_loss(spec, [hp] * 10_001),
        # protobuf's own TypeError and ValueError, naming no field
        "mode": lambda c: c.recommend(spec, mode=True),
        "mode ": lambda c: c.recommend(spec, mode=2**40),
        "page_size": lambda c: c.list_runs(2**31),
    }
    with Client("127.0.0.1:1", retries=0) as client:  # never called
        for field, call in bad_calls.items():
            with pytest.raises(InvalidArgumentError) as caught:
                call(client)
            assert [f for f, _ in caught.value.field_violations] == [field.strip()]


@pytest.mark.parametrize("bad", [-1, 0, float("nan"), float("inf"), "5", True])
def test_a_deadline_that_is_no_positive_number_of_seconds_is_refused_before_any_call(bad):
    """timeout=-1 was sent, and came back as a deadline exceeded; "5" failed inside gRPC."""
    from clients import AsyncClient, Client, InvalidArgumentError
    from clients.errors import ClientSettingsError

    for make in (Client, AsyncClient):
        with pytest.raises(ClientSettingsError, match="timeout: a finite number of seconds, > 0"):
            make("127.0.0.1:1", timeout=bad)
    with Client("127.0.0.1:1", retries=0) as client:  # never called
        with pytest.raises(InvalidArgumentError) as caught:
            client.get_run("r", timeout=bad)
        assert [f for f, _ in caught.value.field_violations] == ["timeout"]
        if bad != 0:  # a patience of 0 is none: one attempt
            with pytest.raises(InvalidArgumentError, match="patience: a finite number of "
                                                           "seconds, >= 0"):
                client.recommend({"n_params": 1e9, "n_tokens": 2e10}, patience=bad)
