"""docs/api.md is what scripts/api_reference.py makes from the .proto comments."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_api_reference_is_up_to_date():
    pytest.importorskip("grpc_tools")
    spec = importlib.util.spec_from_file_location("api_reference", ROOT / "scripts" / "api_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fresh = module.render(module.descriptor_set())
    assert (ROOT / "docs" / "api.md").read_text() == fresh, \
        "docs/api.md is stale: run `python scripts/api_reference.py`"
    # Every RPC, message and enum of the proto has its entry.
    from hparamrec.v1 import recommender_pb2 as pb

    methods = [m.name for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods]
    assert all(f"| `{name}` |" in fresh for name in methods)
    assert all(f"### {name}\n" in fresh for name in [*pb.DESCRIPTOR.message_types_by_name,
                                                       *pb.DESCRIPTOR.enum_types_by_name])
