"""The committed stubs must be exactly what scripts/generate_stubs.py makes from the .proto."""

import filecmp
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "protos" / "hparamrec" / "v1"


def test_committed_stubs_match_the_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    spec = importlib.util.spec_from_file_location("generate_stubs", ROOT / "scripts" / "generate_stubs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(tmp_path)
    fresh = tmp_path / "hparamrec" / "v1"
    names = sorted(p.name for p in fresh.iterdir())
    assert names == ["recommender_pb2.py", "recommender_pb2.pyi", "recommender_pb2_grpc.py"]
    drifted = [n for n in names if not filecmp.cmp(fresh / n, GENERATED / n, shallow=False)]
    assert not drifted, f"stubs drifted from the .proto: run `make stubs` ({drifted})"
