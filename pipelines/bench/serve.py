"""`sae bench serve`: what the service adds to a job, and how fast it lists many jobs.

overhead: the same config run by `sae run CONFIG --out DIR` as a user would start it (wall
clock of the process) and through `sae serve` (submit to the job's end event, as
`sae submit --watch` sees it), alternating so that load on a shared machine hits both alike.
listing: GET /api/jobs over a state directory holding `jobs` finished jobs, each with a
metrics.json, p50 and p95 latency of `requests` calls from one client: the repeated call the
server answers from its cache while no job runs, and uncached calls that rebuild the list.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from sae.config import read_yaml, validate_tree
from sae.io import atomic_write_json
from sae.service.client import events
from sae.service.db import JobStore, NewJob
from sae.service.state import StateDir
from sae.tables import format_table

TINY = {
    "seed": 0,
    "data": {"synthetic": {"num_features": 256, "hidden_dim": 64,
                           "firing": {"kind": "constant", "probability": 0.02}}},
    "sae": {"arch": "topk", "d_sae": 256, "k": 8},
    "train": {"samples": 400_000, "batch_size": 1024, "checkpoint_every_steps": 100},
    "eval": {"samples": 16_384},
    "harvest": {"rows": 400_000},
    "logging": {"wandb": False, "progress": False},
}  # fmt: skip
# a toy run's metrics.json, less its config (--repeats 0 lists jobs without running one)
SAMPLE_METRICS = {
    "mcc": 0.896, "mmcs": 0.943, "frac_recovered_90": 0.729, "frac_recovered_99": 0.667,
    "uniqueness": 0.875, "precision": 0.527, "recall": 0.782, "f1": 0.615, "l0": 2.86,
    "true_l0": 1.89, "explained_variance": 0.846, "dead_latents": 6, "shrinkage": 0.920,
    "arch": "topk", "d_sae": 48, "seconds": 10.2, "samples": 80000, "samples_per_second": 7825.4,
    "source": {"kind": "synthetic", "num_features": 48, "d_in": 32},
}  # fmt: skip
COLUMNS = ("direct_seconds", "service_seconds", "overhead", "list_jobs", "list_p50_ms",
           "list_p95_ms", "uncached_p50_ms", "uncached_p95_ms")  # fmt: skip
URL = re.compile(rb"sae serve: (http://127\.0\.0\.1:\d+)")


def _start_server(state: Path, workers: int) -> tuple[subprocess.Popen[bytes], str, Path]:
    log = state.parent / f"{state.name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sae", "serve", "--state", str(state), "--port", "0",
             "--workers", str(workers)], stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if match := URL.search(log.read_bytes()):
            return process, match.group(1).decode(), log
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"sae serve did not start: {log.read_text()[-1000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    os.kill(process.pid, signal.SIGTERM)
    process.wait(timeout=120)


def _direct(config: Path, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sae", "run", str(config), "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - started


def _through_service(url: str, body: bytes) -> float:
    """Submit to the job's `end` event, watching as `sae submit --watch` does."""
    started = time.perf_counter()
    job_id = httpx.post(f"{url}/api/jobs", params={"kind": "run"}, content=body).json()["id"]
    end = [data for event, data in events(url, job_id, None) if event == "end"][-1]
    if end["state"] != "done":
        raise RuntimeError(f"job {job_id} {end['state']} (see {url}/jobs/{job_id})")
    return time.perf_counter() - started


def _fill(state: StateDir, jobs: int, metrics: dict[str, Any]) -> None:
    store = JobStore(state.db)
    ids = store.add("toy", [NewJob(yaml.safe_dump(TINY), {}, None)] * jobs)
    store.db.execute("UPDATE jobs SET state = 'done', started = created, finished = created")
    for job_id in ids:
        state.out_dir(job_id).mkdir(parents=True)
        atomic_write_json(state.out_dir(job_id) / "metrics.json", metrics)
    store.close()


def _list_latency(url: str, requests: int, jobs: int) -> tuple[list[float], list[float]]:
    """Seconds per GET /api/jobs: repeated (the server's cached answer while nothing runs),
    and each with another `limit` at or above `jobs`, the same list built afresh each time."""
    cached, fresh = [], []
    with httpx.Client() as client:
        client.get(f"{url}/api/jobs").raise_for_status()  # metrics read once, then cached
        for i in range(requests):
            for seconds, params in ((cached, {}), (fresh, {"limit": jobs + i})):
                started = time.perf_counter()
                client.get(f"{url}/api/jobs", params=params).raise_for_status()
                seconds.append(time.perf_counter() - started)
    return sorted(cached), sorted(fresh)


def _percentile_ms(seconds: list[float], q: float) -> float:
    return 1000 * seconds[min(len(seconds) - 1, int(q * len(seconds)))]


def run_bench_serve(
    config: Path | None, repeats: int, jobs: int, requests: int, out_json: Path | None
) -> dict[str, Any]:
    tree = read_yaml(config) if config else TINY
    validate_tree(tree)
    with tempfile.TemporaryDirectory(prefix="sae-bench-serve-") as tmp:
        root = Path(tmp)
        (root / "job.yaml").write_text(yaml.safe_dump(tree))
        direct, service = [], []
        if repeats:
            server, url, _ = _start_server(root / "state", workers=1)
            try:
                for i in range(repeats):
                    direct.append(_direct(root / "job.yaml", root / f"direct{i}"))
                    service.append(_through_service(url, yaml.safe_dump(tree).encode()))
            finally:
                _stop(server)
        found = next((root / "direct0").rglob("metrics.json"), None) if repeats else None
        state = StateDir(root / "listing").create()
        _fill(state, jobs, json.loads(found.read_text()) if found else SAMPLE_METRICS)
        server, url, _ = _start_server(state.root, workers=0)
        try:
            cached, fresh = _list_latency(url, requests, jobs)
        finally:
            _stop(server)
    row = {
        **({"direct_seconds": statistics.median(direct),
            "service_seconds": statistics.median(service),
            "overhead": statistics.median(service) / statistics.median(direct) - 1}
           if repeats else {}),
        "list_jobs": jobs,
        "list_p50_ms": _percentile_ms(cached, 0.5),
        "list_p95_ms": _percentile_ms(cached, 0.95),
        "uncached_p50_ms": _percentile_ms(fresh, 0.5),
        "uncached_p95_ms": _percentile_ms(fresh, 0.95),
    }
    print(format_table([row], [c for c in COLUMNS if c in row]))
    if out_json is not None:
        atomic_write_json(out_json, {**row, "direct_runs": direct, "service_runs": service})
    return row
