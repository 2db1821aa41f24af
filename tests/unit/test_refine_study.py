"""Spec keys, study names and search spaces of the refinement loop."""

import math

import numpy as np
import pytest

from benchmark_db.errors import InvalidArgument
from benchmark_db.records import Pins, resolve_spec
from predictor.prior import PriorRecommender
from predictor.study import (SIZE_BIN, SearchSpace, Studies, bin_edges, spec_key, study_name,
                             tenant_of)


def key(pins=Pins(), **spec):
    return spec_key(resolve_spec(**({"n_params": 1e9, "n_tokens": 2e10} | spec)), pins)


def test_key_absorbs_float_noise_and_small_differences():
    assert key() == key(n_params=1e9 * (1 + 1e-12), n_tokens=2e10 * (1 - 1e-12))
    assert key() == key(n_params=1.005e9)  # powers of ten are bin centres; bins are 2% wide
    assert key() == key(compute_flops=6 * 1e9 * 2e10, n_tokens=None)  # the same spec, another way


def test_key_separates_what_matters():
    base = key()
    assert key(n_params=1.03e9) != base
    assert key(n_tokens=2.1e10) != base
    assert key(seq_len=4096) != base
    assert key(weight_bits=4) != base
    assert key(architecture="moe", n_active_params=1e9, n_params=4e9) != key(n_params=4e9)
    assert key(pins=Pins(weight_decay=0.1)) != base
    assert key(pins=Pins(weight_decay=0.1)) == key(pins=Pins(weight_decay=0.1005))
    assert key(pins=Pins(weight_decay=0.1)) != key(pins=Pins(weight_decay=0.12))
    assert key(pins=Pins(weight_decay=0.0)) != key(pins=Pins(weight_decay=0.1))


def test_a_qat_pin_matters_only_with_quantization():
    assert key(pins=Pins(qat_fraction=0.0)) == key()
    assert key(pins=Pins(qat_fraction=0.3), weight_bits=4) != key(weight_bits=4)


def test_study_names_carry_the_tenant():
    spec = resolve_spec(n_params=1e9, n_tokens=2e10)
    name = study_name("alice", spec, Pins())
    assert name.startswith("hparamrec/alice/") and tenant_of(name) == "alice"
    assert study_name("bob", spec, Pins()) != name
    assert tenant_of("someone-elses-study") is None
    with pytest.raises(InvalidArgument):
        study_name("../alice", spec, Pins())


def space_for(pins=Pins(), **spec_fields):
    spec = resolve_spec(**({"n_params": 1e9, "n_tokens": 2e10} | spec_fields))
    return SearchSpace.around(PriorRecommender().recommend(spec, pins), spec, pins), spec


def test_space_is_a_factor_ten_around_the_recommendation():
    space, spec = space_for(Pins(weight_decay=0.1))
    rec = PriorRecommender().recommend(spec, Pins(weight_decay=0.1))
    assert space.free == ("lr", "batch_size_tokens")
    assert space.fixed == {"weight_decay": 0.1, "qat_fraction": 0.0}
    assert space.bounds["lr"] == pytest.approx((rec.lr / 10, rec.lr * 10))
    lo, hi = space.bounds["batch_size_tokens"]
    assert lo % spec.seq_len == 0 and hi % spec.seq_len == 0
    assert lo == pytest.approx(rec.batch_size_tokens / 10, rel=0.05)  # whole sequences


def test_space_has_qat_only_with_quantization_and_caps_the_batch():
    space, _ = space_for(weight_bits=4)
    assert space.free == ("lr", "batch_size_tokens", "weight_decay", "qat_fraction")
    assert space.bounds["qat_fraction"] == (0.0, 1.0)
    small, spec = space_for(n_params=1e6, n_tokens=2e7)
    assert small.bounds["batch_size_tokens"][1] <= spec.n_tokens


def test_encode_decode_and_widening():
    space, _ = space_for(weight_bits=4)
    params = space.decode(np.zeros((1, 4)) + [math.log(1e-3), math.log(1e6), math.log(0.1), 0.5])
    assert params["batch_size_tokens"][0] % 2048 == 0
    assert params["qat_fraction"][0] == 0.5
    again = space.decode(space.encode(params))
    assert all(again[n][0] == pytest.approx(params[n][0]) for n in params)
    outside = {"lr": 10.0, "batch_size_tokens": 1.0, "weight_decay": 0.1, "qat_fraction": 0.0}
    widened = space.widened(outside)
    assert all(widened[n]._contains(widened[n].to_internal_repr(v)) for n, v in outside.items())
    assert not space.accepts(outside | {"weight_decay": 0.0})  # a log axis cannot hold 0


def test_space_round_trips_through_json():
    space, _ = space_for(Pins(batch_size_tokens=2**20))
    assert SearchSpace.from_json(space.to_json()) == space


@pytest.mark.parametrize("value", [1e9, 2e10, 1.37e8, 7.7e12, 1.5e4])
def test_bin_edges_hold_exactly_the_values_of_the_key_bin(value):
    lo, hi = bin_edges(value)
    assert lo < value < hi
    assert hi / lo == pytest.approx(math.exp(SIZE_BIN), rel=1e-6)  # one bin, 2% wide
    inside = [lo * (1 + 1e-6), hi * (1 - 1e-6)]
    outside = [lo * (1 - 1e-6), hi * (1 + 1e-6)]
    assert all(key(n_params=v) == key(n_params=value) for v in inside)
    assert all(key(n_params=v) != key(n_params=value) for v in outside)


def test_unbounded_space_frees_everything_and_encodes_a_weight_decay_of_zero():
    spec = resolve_spec(n_params=1e9, n_tokens=2e10)
    space = SearchSpace.unbounded(spec)
    assert space.free == ("lr", "batch_size_tokens", "weight_decay")
    assert space.fixed == {"qat_fraction": 0.0}
    assert SearchSpace.unbounded(resolve_spec(n_params=1e9, n_tokens=2e10, weight_bits=4)).free[-1] \
        == "qat_fraction"
    z = space.encode({"lr": np.array([1e-3, 1e-3]), "batch_size_tokens": np.array([1e6, 1e6]),
                      "weight_decay": np.array([0.1, 0.0]), "qat_fraction": np.zeros(2)})
    assert np.isfinite(z).all() and z[0, 2] - z[1, 2] > 20  # wd 0 is far from any other


def test_studies_of_a_spec_are_the_callers_own_with_any_pins(tmp_path):
    studies = Studies(f"sqlite:///{tmp_path / 'studies.db'}")
    spec, other = resolve_spec(n_params=1e9, n_tokens=2e10), resolve_spec(n_params=2e9, n_tokens=2e10)
    space = SearchSpace.around(PriorRecommender().recommend(spec, Pins()), spec, Pins())
    try:
        for tenant, s, pins in [("a_b", spec, Pins(weight_decay=0.1)), ("A_B", spec, Pins()),
                                ("axb", spec, Pins()), ("a_b", other, Pins()), ("a_b", spec, Pins())]:
            studies.create(study_name(tenant, s, pins), space, s, pins)
        assert studies.of_spec("a_b", spec) == [study_name("a_b", spec, Pins(weight_decay=0.1)),
                                                study_name("a_b", spec, Pins())]  # oldest first
        assert studies.of_spec("nobody", spec) == []
    finally:
        studies.close()
