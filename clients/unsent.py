"""Reports that could not be sent: the integrations save a run's report here when the service
stays unreachable past their patience, and `hparamrec send-unsent` sends them later. One JSON
file per run (the ReportRunRequest in its proto JSON form), named after the run_id; a report
sent twice is stored once, so sending one again is always safe."""

import hashlib
import json
import os
import re
from pathlib import Path

from google.protobuf import json_format

from clients import convert
from clients.models import RunReport
from hparamrec.v1 import recommender_pb2 as pb


def unsent_dir() -> Path:
    """$HPARAMREC_UNSENT_DIR, else ~/.cache/hparamrec/unsent."""
    given = os.environ.get("HPARAMREC_UNSENT_DIR")
    return Path(given).expanduser() if given else Path.home() / ".cache" / "hparamrec" / "unsent"


def save(report: RunReport, directory: Path | None = None) -> Path:
    """Writes the report (atomically: a crash leaves no half file) and returns its path."""
    directory = Path(directory) if directory is not None else unsent_dir()
    directory.mkdir(parents=True, exist_ok=True)
    # run_ids may hold characters a file name cannot; the digest keeps cleaned ones apart.
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", report.run_id)[:80]
    digest = hashlib.sha256(report.run_id.encode()).hexdigest()[:8]
    path = directory / f"{cleaned}-{digest}.json"
    partial = path.with_suffix(".partial")
    partial.write_text(convert.as_json(report) + "\n")
    os.replace(partial, path)
    return path


def load(path: Path) -> pb.ReportRunRequest:
    """The saved report; ValueError if the file is not one."""
    try:
        return json_format.ParseDict(json.loads(Path(path).read_text()), pb.ReportRunRequest())
    except UnicodeDecodeError:
        raise ValueError("not a saved report (not UTF-8 text)") from None
    except (json.JSONDecodeError, json_format.ParseError) as exc:
        raise ValueError(f"not a saved report ({exc})") from None


def saved_in(paths: list[Path]) -> list[Path]:
    """The report files among `paths`, each a file or a directory of them (sorted)."""
    found = []
    for path in paths:
        found += sorted(path.glob("*.json")) if path.is_dir() else [path]
    return found
