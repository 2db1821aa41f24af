"""Checkpoints: the weights and bucket borders in a safetensors file whose metadata carries the
PFNConfig (JSON), the checkpoint format, the prior and features versions and the
training-data hash; a JSON file beside it repeats the metadata for people (and diffs), with
the training log's figures."""

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file, save_file
from safetensors import safe_open

from predictor.pfn.config import CHECKPOINT_FORMAT, PFNConfig
from predictor.pfn.features import FEATURES_VERSION
from predictor.pfn.model import PFN, build_model

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
DEFAULT_CHECKPOINT = CHECKPOINT_DIR / "pfn.safetensors"


@dataclass(frozen=True)
class Checkpoint:
    model: PFN
    config: PFNConfig
    metadata: dict[str, str]

    @property
    def version(self) -> str:
        """Names the trained network: format, prior and the data it was trained on."""
        return f"pfn@{self.metadata['prior_version']}:{self.metadata['data_hash']}"


def save(model: PFN, config: PFNConfig, path: Path, extra: dict | None = None) -> dict[str, str]:
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "config": config.to_json(),
        "prior_version": config.prior.version,
        "features_version": FEATURES_VERSION,
        "data_hash": config.data_hash(),
    } | {k: str(v) for k, v in (extra or {}).items()}
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    sidecar = {k: (json.loads(v) if k == "config" else v) for k, v in metadata.items()}
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return metadata


def load(path: Path = DEFAULT_CHECKPOINT) -> Checkpoint:
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {metadata.get('format')!r}, "
                         f"expected {CHECKPOINT_FORMAT!r}")
    if metadata.get("features_version") != FEATURES_VERSION:
        raise ValueError(f"{path}: trained on features {metadata.get('features_version')!r}, "
                         f"this code makes {FEATURES_VERSION!r}: retrain (make pfn)")
    config = PFNConfig.from_json(metadata["config"])
    if config.data_hash() != metadata["data_hash"]:
        raise ValueError(f"{path}: the stored training-data hash does not match its config")
    tensors = load_file(str(path))
    model = build_model(config.model, tensors["bar.borders"])
    model.load_state_dict(tensors)
    model.eval()
    return Checkpoint(model=model, config=config, metadata=metadata)
