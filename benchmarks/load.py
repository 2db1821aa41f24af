"""Load benchmark: a real `hparamrec serve` process on loopback driven by concurrent clients ->
docs/benchmarks.md (section "load").

    python -m benchmarks.load [--seconds 10] [--clients 32] [--processes 4] [--data PATH] [--no-write]

The server runs as `make run` does (SQLite with synchronous=FULL, --no-auth, default settings).
Its database first gets the real Step Law sweep, so Recommend is answered by the learned model
(as in production once a tenant has runs), not by the published-law prior alone. Each scenario
then runs for a fixed time with `--clients` concurrent callers, spread over `--processes` client
processes (threads within each: one Python process could not keep 32 calls in flight without
becoming the bottleneck itself):

- health: grpc.health.v1.Health/Check, the ceiling of gRPC-in-Python on this machine;
- recommend (repeated spec): every call asks for the same spec;
- recommend (varied specs): every call asks for a spec never asked before;
- report: ReportRun with a new run_id per call, acknowledged only after its commit.

Latency is measured at the client, per call, from send to answer.
"""

import argparse
import itertools
import math
import multiprocessing as mp
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks import report

ROOT = Path(__file__).resolve().parent.parent
HPARAMREC = str(Path(sys.executable).parent / "hparamrec")
SCENARIOS = {
    "health": "grpc.health Check (ceiling)",
    "recommend_repeated": "Recommend, repeated spec",
    "recommend_varied": "Recommend, varied specs",
    "report": "ReportRun (durable, SQLite)",
}
TARGETS = {"recommend_repeated": "≥ 1,000 req/s, ≥ 30% of the ceiling, p99 ≤ 25 ms",
           "report": "≥ 300 reports/s"}


# ----- the client side: one process, several threads, one channel ------------------------------

def _request_factory(scenario: str, worker: int):
    """A function of (thread, i) returning (method name, request) for call i of a thread."""
    from grpc_health.v1 import health_pb2

    from hparamrec.v1 import recommender_pb2 as pb

    if scenario == "health":
        request = health_pb2.HealthCheckRequest()
        return lambda thread, i: ("health", request)
    if scenario == "recommend_repeated":
        request = pb.RecommendRequest(spec=pb.TrainingSpec(n_params=1e9, n_tokens=2e10))
        return lambda thread, i: ("recommend", request)
    if scenario == "recommend_varied":
        def varied(thread, i):
            rng = random.Random(hash((worker, thread, i)))
            n = 10 ** rng.uniform(7.5, 10.5)
            return "recommend", pb.RecommendRequest(spec=pb.TrainingSpec(
                n_params=n, n_tokens=n * 10 ** rng.uniform(1, 2.5)))
        return varied
    specs = [pb.TrainingSpec(n_params=n, n_tokens=n * 20) for n in (1e8, 3e8, 1e9, 3e9)]

    def report_run(thread, i):
        rng = random.Random(hash((worker, thread, i)))
        return "report", pb.ReportRunRequest(
            run_id=f"load-{os.getpid()}-{thread}-{i}", spec=specs[i % len(specs)],
            hyperparameters=pb.Hyperparameters(lr=10 ** rng.uniform(-3.5, -2.5),
                                               batch_size_tokens=2.0 ** rng.randint(18, 22),
                                               weight_decay=0.1),
            outcome=pb.RunOutcome(status=pb.RUN_STATUS_COMPLETED, final_loss=rng.uniform(2.2, 3.2)),
            metadata={"launcher": f"bench-{worker}"})
    return report_run


def _client_process(target: str, scenario: str, worker: int, callers: int, seconds: float,
                    ready, go, results) -> None:
    """`callers` concurrent callers on one grpc.aio channel (an event loop costs the client
    less CPU than as many threads, leaving more of the 2 cores to the server)."""
    import asyncio

    import grpc
    from grpc_health.v1 import health_pb2_grpc

    from hparamrec.v1 import recommender_pb2_grpc as pb_grpc

    make = _request_factory(scenario, worker)

    async def main():
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            methods = {"health": health_pb2_grpc.HealthStub(channel).Check,
                       "recommend": stub.Recommend, "report": stub.ReportRun}
            latencies, errors = [], [0]

            async def caller(c: int, end: float) -> None:
                for i in itertools.count():
                    name, request = make(c, i)
                    t0 = time.perf_counter()
                    if t0 >= end:
                        return
                    try:
                        await methods[name](request, timeout=30)
                        latencies.append(time.perf_counter() - t0)
                    except grpc.RpcError:
                        errors[0] += 1

            if scenario != "report":  # warm up: connection, first-call paths
                await asyncio.gather(*(methods[make(c, -1)[0]](make(c, -1)[1], timeout=30)
                                       for c in range(callers)))
            ready.release()
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            started = time.perf_counter()
            await asyncio.gather(*(caller(c, started + seconds) for c in range(callers)))
            return latencies, errors[0], time.perf_counter() - started

    results.put(asyncio.run(main()))


def run_scenario(target: str, scenario: str, clients: int, processes: int, seconds: float) -> dict:
    ctx = mp.get_context("spawn")  # no gRPC state inherited through fork
    ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    per = [clients // processes + (i < clients % processes) for i in range(processes)]
    procs = [ctx.Process(target=_client_process, args=(target, scenario, i, n, seconds, ready, go, results))
             for i, n in enumerate(per) if n]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire(timeout=120)
    go.set()
    outs = [results.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    latencies = sorted(itertools.chain.from_iterable(o[0] for o in outs))
    wall = max(o[2] for o in outs)
    return {"calls": len(latencies), "errors": sum(o[1] for o in outs),
            "throughput": len(latencies) / wall if wall else 0.0,
            "p50_ms": 1000 * _percentile(latencies, 50), "p99_ms": 1000 * _percentile(latencies, 99),
            "mean_ms": 1000 * statistics.fmean(latencies) if latencies else math.nan}


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    return values[min(len(values) - 1, int(math.ceil(q / 100 * len(values))) - 1)]


# ----- the server -------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, db_url: str, log: Path, env: dict[str, str]):
        self.port, self.metrics_port = _free_port(), _free_port()
        self.target = f"127.0.0.1:{self.port}"
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                [HPARAMREC, "serve", "--db", db_url, "--no-auth", "--port", str(self.port),
                 "--metrics-port", str(self.metrics_port)],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    def wait_ready(self, refits: int, timeout: float = 600) -> None:
        """Serving, and `refits` refits done (the learned model in place)."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited with {self.process.returncode}")
                try:
                    if (check(health_pb2.HealthCheckRequest(), timeout=1).status == 1
                            and self.metric("hparamrec_refit_seconds_count") >= refits):
                        return
                except (grpc.RpcError, OSError):
                    pass
                time.sleep(0.5)
        raise TimeoutError("the server did not become ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def seed(db_url: str, data: Path) -> int:
    """The real sweep in the server's database (as `hparamrec import` would put it there)."""
    from benchmark_db.importers import read_runs
    from benchmark_db.store import DEFAULT_TENANT, RunStore

    store = RunStore(db_url)
    try:
        return store.add_many(DEFAULT_TENANT, read_runs(data, "steplaw"))
    finally:
        store.close()


def machine_busy_seconds() -> float:
    """CPU time all processes have used so far, summed over cores (Linux /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU time of this process's finished children (the client processes of past scenarios)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(pid: int) -> float:
    """CPU time of the server and of its live children (the refit process, kept for the
    server's lifetime, so it is there at both ends of a scenario)."""
    children = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children.update(int(c) for c in (task / "children").read_text().split())
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children)


# ----- main -------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="per scenario")
    parser.add_argument("--clients", type=int, default=32, help="concurrent callers")
    parser.add_argument("--processes", type=int, default=4, help="client processes")
    parser.add_argument("--data", type=Path, default=report.STEPLAW_DENSE,
                        help="the Step Law dense sweep")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--note", default="", help="a line on what else ran on the machine")
    parser.add_argument("--set", action="append", default=[], metavar="VAR=VALUE",
                        help="an HPARAMREC_* setting for the server, e.g. HPARAMREC_MAX_WORKERS=8")
    args = parser.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    if not args.data.is_file():
        # an empty store would be answered by the published laws alone, not the learned model
        parser.error(f"--data {args.data}: no such file (the Step Law dense sweep)")

    load_before, machine = os.getloadavg(), report.machine()
    rows, cpu = {}, {}
    with tempfile.TemporaryDirectory(prefix="hparamrec-load-") as tmp:
        db_url = f"sqlite:///{Path(tmp) / 'load.db'}"
        seeded = seed(db_url, args.data)
        server = Server(db_url, Path(tmp) / "server.log", env=dict(s.split("=", 1) for s in args.set))
        try:
            server.wait_ready(refits=1 if seeded else 0)
            for scenario in scenarios:
                before = (server_cpu_seconds(server.process.pid), children_cpu_seconds(),
                          machine_busy_seconds(), time.monotonic())
                rows[scenario] = run_scenario(server.target, scenario, args.clients, args.processes,
                                              args.seconds)
                after = (server_cpu_seconds(server.process.pid), children_cpu_seconds(),
                         machine_busy_seconds(), time.monotonic())
                used = [(a - b) / (after[3] - before[3]) for a, b in zip(after[:3], before[:3])]
                # cores used by the server, by the clients, and by everything else on the machine
                cpu[scenario] = (used[0], used[1], max(0.0, used[2] - used[0] - used[1]))
                r = rows[scenario]
                print(f"{scenario:20s} {r['throughput']:8.0f}/s  p50 {r['p50_ms']:6.2f} ms  "
                      f"p99 {r['p99_ms']:6.2f} ms  errors {r['errors']}  cores: server {used[0]:.2f} "
                      f"clients {used[1]:.2f} others {cpu[scenario][2]:.2f}", flush=True)
            refits = server.metric("hparamrec_refit_seconds_count")
        finally:
            server.stop()
            log_tail = (Path(tmp) / "server.log").read_text().splitlines()[-5:]
    load_after = os.getloadavg()
    if server.process.returncode not in (0, None):
        print("\n".join(log_tail), file=sys.stderr)

    markdown = render(rows, cpu, args, seeded, refits, machine, load_before, load_after)
    print(markdown)
    if not args.no_write:
        report.write_section("load", markdown)


def render(rows, cpu, args, seeded, refits, machine, load_before, load_after) -> str:
    ceiling = rows.get("health", {}).get("throughput")
    lines = [
        "## Load: one server process, concurrent clients",
        "",
        f"`python -m benchmarks.load` ({machine}): a `hparamrec serve` process on "
        f"loopback (SQLite with synchronous=FULL, --no-auth, default settings) whose database "
        f"holds the {seeded} runs of the Step Law sweep, so Recommend is answered by the learned "
        f"model; {args.clients} concurrent callers in {args.processes} client processes on the "
        f"same 2 cores, {args.seconds:g} s per scenario, latency measured at the client.",
        "",
        "| scenario | throughput | vs ceiling | p50 | p99 | errors | cores: server / clients / others | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for scenario, r in rows.items():
        share = f"{r['throughput'] / ceiling:.0%}" if ceiling and scenario != "health" else ""
        lines.append(f"| {SCENARIOS[scenario]} | {r['throughput']:,.0f}/s | {share} | "
                     f"{r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['errors']} | "
                     f"{cpu[scenario][0]:.2f} / {cpu[scenario][1]:.2f} / {cpu[scenario][2]:.2f} | "
                     f"{TARGETS.get(scenario, '')} |")
    lines += [
        "",
        "Cores: CPU used during the scenario by the server (its refit process included), by the "
        "client processes, and by everything else on the machine (/proc/stat), out of 2. "
        f"Load average (1 min) before / after the run: {load_before[0]:.2f} / {load_after[0]:.2f}; "
        f"refits during the run: {refits:.0f}."
        + (f" Server settings: {', '.join(args.set)}." if args.set else "")
        + (f" {args.note}" if args.note else ""),
        "",
        NOTES,
    ]
    return "\n".join(lines)


# What profiling showed and what was changed, measured while developing on the same (shared)
# machine with py-spy on the server process; figures from back-to-back runs, not this one.
NOTES = """\
With 32 callers that each wait for their answer, mean latency is 32 / throughput: a p99 of
25 ms needs well over 1,300 calls/s with little spread, on 2 cores that also run the clients.

What the profile showed (py-spy on the server, 32 callers), and what was done:

- Recommend, repeated spec, started at 223 req/s (p99 268 ms). 40% of the server's samples were
  in the handler: the learned model's argmin and the refiner's exploit path, with an Optuna
  study lookup on every call. A cache per (tenant, spec, pins) in `predictor/engine.py`, valid
  until the tenant's model is swapped or a run is reported through the replica and for at most
  5 s, with a fresh `recommendation_id` per answer: ~1,500 req/s. What remains is gRPC's own
  machinery; sending the request id as initial metadata cost each call a second batch through
  the core (~0.15 ms of server CPU), so it now rides in the trailing metadata with the status.
- ReportRun started at 92 reports/s (p99 2 s). Half the samples were threads asleep in
  SQLite's busy handler: 32 handlers committing one by one. Group commit (one writer thread,
  one transaction for whatever queued up, each report acknowledged after that commit): the
  store path alone (refiner and refits switched off for the measurement) went from 427 to
  593 reports/s, p99 675 to 235 ms. With the refiner on, most of a report's time is
  `Refiner.tell` -> `_matching_studies`, which asked Optuna for each of 16 candidate study
  names one query at a time; it now asks once for all of them (tried first on a patched
  server: 414 reports/s with refits on, 598/s with them off). The refits of the `auto` model (~14 s of CPU on the 1,911 stored runs) ran in the
  same process throughout a stream of reports; they now run in a child process (docs/design.md,
  Refits), and the ReportRun figures above are with them on.
- gRPC dropped calls of large bursts (CANCELLED once over 1,000 waited for a worker): the
  server now queues up to 10,000.
- Handler threads (HPARAMREC_MAX_WORKERS), back to back on a quiet machine, repeated-spec
  Recommend: 32 threads 1,667-2,137 req/s with p99 24-30 ms; 16: 1,871/s, p99 26 ms;
  8: 2,292-2,359/s, p99 22 ms; 4: 2,888/s, p99 20 ms; ReportRun 388-449/s with any of them.
  Only one thread runs Python at a time, and fewer threads switch less. The default is now 8,
  not 4, to leave room beside a few slow calls (explore) in flight at once.
- Clients: 4 processes, each with a grpc.aio event loop; with threads instead, the same machine
  measured a lower ceiling (1,957 vs 2,384 health checks/s), the clients taking more of the
  shared cores."""


if __name__ == "__main__":
    main()
