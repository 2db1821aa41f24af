"""Builders of valid domain objects for tests."""

import csv
import datetime
import ipaddress
from pathlib import Path

from benchmark_db.records import RunReport, resolve_spec, validated


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def make_report(run_id="run-1", *, n_params=1e9, n_tokens=2e10, lr=1e-3, batch=1 << 20,
                weight_decay=0.1, status="completed", loss=2.5, **extra) -> RunReport:
    spec = resolve_spec(n_params=n_params, n_tokens=n_tokens)
    return validated(RunReport, {
        "run_id": run_id, "spec": spec,
        "hyperparameters": {"lr": lr, "batch_size_tokens": batch, "weight_decay": weight_decay},
        "outcome": {"status": status, "final_loss": loss if status == "completed" else None},
        **extra,
    })


def client_report(run_id="run-1", **fields) -> dict:
    """make_report's run as the client library takes it (a dict of the request's fields)."""
    return make_report(run_id, **fields).model_dump(mode="json", exclude={"source"},
                                                    exclude_none=True)


def all_runs(stub, max_pages: int = 100) -> list:
    """Every stored run through ListRuns (a RecommenderService stub), page by page; bounded,
    so a server whose pages never end fails the test instead of hanging it."""
    from hparamrec.v1 import recommender_pb2 as pb

    runs, token = [], ""
    for _ in range(max_pages):
        page = stub.ListRuns(pb.ListRunsRequest(page_size=1000, page_token=token), timeout=30)
        runs += page.runs
        token = page.next_page_token
        if not token:
            return runs
    raise AssertionError("ListRuns never reached its last page")


# A known world for the learned models: its optimum sits at TRUE_LR_FACTOR x Step Law's lr,
# so a model that only echoes the prior is visibly wrong.
TRUE_LR_FACTOR = 1.5
SWEEP_GROUPS = ((2e8, 4e9), (2e8, 2e10), (4e8, 8e9), (4e8, 4e10), (8e8, 1.6e10), (8e8, 6e10))


def true_optimum(n_params: float, n_tokens: float) -> tuple[float, float]:
    lr = TRUE_LR_FACTOR * 1.79 * n_params**-0.713 * n_tokens**0.307
    return lr, 0.58 * n_tokens**0.571


def sweep_loss(n_params: float, n_tokens: float, u, v):
    """The synthetic sweep's noise-free loss at ln(lr / lr*) = u, ln(batch / batch*) = v: an
    asymmetric bowl over a Chinchilla-like level."""
    base = 1.8 + 480 / n_params**0.35 + 2000 / n_tokens**0.37
    excess = 0.01 * (u**2 + 0.3 * u**3 / 3) + 0.008 * v**2 - 0.003 * u * v
    return base * (1 + excess)


def synthetic_sweep(groups=SWEEP_GROUPS, seed: int = 0, noise: float = 0.0005) -> list[RunReport]:
    """lr x batch grids around a known optimum: an asymmetric bowl, a divergence cliff at 8x
    the optimal lr (diverged runs keep a loss of ~7), and multiplicative noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    reports = []
    for n, d in groups:
        lr_star, b_star = true_optimum(n, d)
        for i, u in enumerate(np.linspace(-2.0, 2.4, 9)):
            for j, v in enumerate(np.linspace(-1.5, 1.5, 5)):
                lr, batch = lr_star * np.exp(u), b_star * np.exp(v)
                diverged = u > np.log(8)
                loss = 7.0 if diverged else sweep_loss(n, d, u, v) * np.exp(noise * rng.standard_normal())
                reports.append(validated(RunReport, {
                    "run_id": f"syn-{n:.0e}-{d:.0e}-{i}-{j}",
                    "spec": resolve_spec(n_params=n, n_tokens=d),
                    "hyperparameters": {"lr": lr, "batch_size_tokens": batch, "weight_decay": 0.1},
                    "outcome": {"status": "diverged" if diverged else "completed", "final_loss": loss},
                }))
    return reports


def self_signed_pair(directory, stem="server"):
    """A self-signed certificate for localhost and its key, in PEM: (cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(private.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .sign(private, hashes.SHA256()))
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return cert_path, key_path
