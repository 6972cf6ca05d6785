"""`sae serve`'s HTTP API against a real server on 127.0.0.1 and a real SQLite file."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from safetensors.torch import load_file

from sae.service.db import JobStore
from sae.service.processes import group_members
from tests.serve_helpers import Server, start_server, stop_server, toy_yaml, wait_for, wait_state

TOKEN = "t0ken-that-must-never-be-logged"


@pytest.fixture
def idle(tmp_path: Path) -> Iterator[Server]:
    """A server with no workers: jobs stay queued, so the API is tested without training."""
    server = start_server(tmp_path / "state", "--workers", "0")
    yield server
    stop_server(server)


@pytest.fixture
def working(tmp_path: Path) -> Iterator[Server]:
    server = start_server(tmp_path / "state", "--workers", "1")
    yield server
    stop_server(server)


def submit(server: Server, body: str, kind: str = "toy") -> httpx.Response:
    return server.api("POST", "/api/jobs", params={"kind": kind}, content=body)


def test_openapi_documents_the_contract_routes(idle: Server) -> None:
    paths = idle.api("GET", "/openapi.json").json()["paths"]
    for path in ("/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/events",
                 "/api/jobs/{job_id}/cancel", "/api/jobs/{job_id}/retry",
                 "/api/jobs/{job_id}/logs", "/api/jobs/{job_id}/download",
                 "/api/jobs/{job_id}/publish"):  # fmt: skip
        assert path in paths, path
    assert "post" in paths["/api/jobs"] and "get" in paths["/api/jobs"]


def test_an_invalid_config_answers_422_with_one_line_and_queues_nothing(idle: Server) -> None:
    refused = submit(idle, toy_yaml().replace("arch: topk", "arch: tokp"))
    assert refused.status_code == 422
    assert refused.json() == {
        "error": "config key 'sae.arch': unknown architecture (choose from batchtopk, gated, "
                 "jumprelu, matryoshka, panneal, relu, topk) (got 'tokp')"  # fmt: skip
    }
    assert submit(idle, "data: {store: ../../etc}", kind="train").json()["error"] == (
        "data.store '../../etc' is outside the state directory")
    assert idle.api("GET", "/api/jobs").json() == []


def test_jobs_are_listed_filtered_cancelled_and_retried(idle: Server) -> None:
    toy = submit(idle, toy_yaml())
    assert toy.status_code == 201
    first = toy.json()["id"]
    sweep = submit(idle, toy_yaml().replace("lr: 0.005", "lr: [0.005, 0.001]"), kind="run").json()
    assert sweep["sweep"] == sweep["ids"][0] and len(sweep["ids"]) == 2
    jobs = idle.api("GET", "/api/jobs").json()
    assert [(j["id"], j["kind"], j["state"]) for j in jobs] == [
        (sweep["ids"][1], "run", "queued"), (sweep["ids"][0], "run", "queued"), (first, "toy", "queued")]
    assert all("metrics" in j for j in jobs)
    assert [j["id"] for j in idle.api("GET", "/api/jobs", params={"kind": "toy"}).json()] == [first]
    assert len(idle.api("GET", "/api/jobs", params={"sweep": sweep["sweep"]}).json()) == 2
    assert idle.api("POST", f"/api/jobs/{first}/cancel").json()["state"] == "cancelled"
    assert [j["id"] for j in idle.api("GET", "/api/jobs", params={"state": "cancelled"}).json()] == [first]
    assert idle.api("POST", f"/api/jobs/{first}/retry").json()["state"] == "queued"
    detail = idle.job(first)
    assert detail["config"] == toy_yaml() and detail["metrics"] is None


def test_errors_are_one_line_without_tracebacks(idle: Server) -> None:
    missing = idle.api("GET", "/api/jobs/999")
    assert (missing.status_code, missing.json()) == (404, {"error": "no job 999"})
    bad = idle.api("GET", "/api/jobs/abc")
    assert bad.status_code == 422 and "Traceback" not in bad.text
    ranks = idle.api("POST", "/api/jobs", params={"kind": "toy", "nproc": 2}, content=toy_yaml())
    assert ranks.json()["error"] == (
        "nproc > 1 runs under torchrun, which sae toy does not join (sae harvest and sae train do)")
    kind = submit(idle, toy_yaml(), kind="bogus")
    assert kind.json()["error"] == "kind must be one of run, toy, train, harvest (got 'bogus')"


def test_other_sites_pages_and_rebound_host_names_are_refused(idle: Server) -> None:
    forged = idle.api("POST", "/api/jobs", params={"kind": "toy"}, content=toy_yaml(),
                      headers={"Origin": "http://evil.example"})  # fmt: skip
    assert forged.status_code == 403 and "cross-site" in forged.json()["error"]
    rebound = idle.api("GET", "/api/jobs", headers={"Host": "evil.example:8000"})
    assert rebound.status_code == 403
    same = idle.api("POST", "/api/jobs", params={"kind": "toy"}, content=toy_yaml(),
                    headers={"Origin": idle.url})  # fmt: skip
    assert same.status_code == 201


def test_uploads_over_the_limit_are_refused(idle: Server) -> None:
    big = submit(idle, "# " + "x" * (1 << 20))
    assert big.status_code == 413 and "over 1048576 bytes" in big.json()["error"]


def test_a_token_is_required_on_every_request_and_never_logged(tmp_path: Path) -> None:
    server = start_server(tmp_path / "state", "--workers", "0", env={"SAE_SERVE_TOKEN": TOKEN})
    try:
        assert server.api("GET", "/api/jobs").status_code == 401
        assert server.api("GET", "/openapi.json").status_code == 401
        page = server.api("GET", "/", follow_redirects=False)
        assert (page.status_code, page.headers["location"]) == (303, "/login")
        assert server.api("GET", "/static/app.js", follow_redirects=False).status_code == 303
        wrong = {"Authorization": "Bearer nope"}
        assert server.api("GET", "/api/jobs", headers=wrong).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert server.api("GET", "/api/jobs", headers=auth).json() == []
        login = server.api("POST", "/login", content=f"token={TOKEN}", follow_redirects=False,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert server.api("GET", "/", cookies=login.cookies).status_code == 200
        assert submit(server, toy_yaml()).status_code == 401
    finally:
        stop_server(server)
    assert TOKEN not in server.output.read_text()


def test_serve_refuses_other_hosts_without_a_token_and_a_second_server(idle: Server) -> None:
    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "sae", "serve", "--port", "0", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    public = serve("--host", "0.0.0.0", "--state", str(idle.output.parent / "other"))
    assert public.returncode == 2
    assert public.stderr.strip() == (
        "sae: error: --host 0.0.0.0 is reachable from other machines: give --token or set "
        "SAE_SERVE_TOKEN")
    state = idle.output.parent / "state"
    second = serve("--state", str(state))
    assert second.returncode == 2
    assert second.stderr.strip() == (
        f"sae: error: another sae serve is already running on state directory {state.resolve()}")


def sse(server: Server, job_id: int) -> list[tuple[str, dict]]:
    events, name = [], ""
    with httpx.stream("GET", f"{server.url}/api/jobs/{job_id}/events", timeout=240) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    return events


def test_a_job_runs_to_done_with_events_metrics_logs_and_artifacts(working: Server) -> None:
    job_id = submit(working, toy_yaml()).json()["id"]
    events = sse(working, job_id)  # from queued (or running) to the end
    names = [name for name, _ in events]
    assert names[0] == "state" and names[-1] == "end" and "progress" in names
    progress = [data for name, data in events if name == "progress"]
    last = progress[-1]["records"][-1]
    assert {"step", "samples", "loss", "l0", "explained_variance", "dead_fraction"} <= set(last)
    assert "eta_seconds" in progress[-1] and 0 < progress[-1]["fraction"] <= 1
    end = events[-1][1]
    assert end["state"] == "done" and end["exit_code"] == 0
    job = working.job(job_id)
    assert job["metrics"]["arch"] == "topk" and 0 <= job["metrics"]["f1"] <= 1
    assert {"report.html", "metrics.json", "sae/cfg.json"} <= set(job["artifacts"])
    assert "== attempt 1: sae toy" in working.api("GET", f"/api/jobs/{job_id}/logs").text
    archive = zipfile.ZipFile(io.BytesIO(working.api("GET", f"/api/jobs/{job_id}/download").content))
    assert sorted(archive.namelist()) == [f"job{job_id}-sae/cfg.json",
                                          f"job{job_id}-sae/sae_weights.safetensors",
                                          f"job{job_id}-sae/sparsity.safetensors"]
    report = working.api("GET", f"/api/jobs/{job_id}/files/report.html")
    assert report.status_code == 200 and "<html" in report.text.lower()
    assert working.api("GET", f"/api/jobs/{job_id}/files/../serve.db").status_code == 404
    escape = working.api("POST", f"/api/jobs/{job_id}/publish", json={"to": "../../outside"})
    assert escape.status_code == 422 and "outside the state directory" in escape.json()["error"]
    published = working.api("POST", f"/api/jobs/{job_id}/publish", json={"to": "mine"},
                            timeout=300)  # a `sae publish` process, on a busy machine  # fmt: skip
    assert published.status_code == 200, published.text
    assert (working.output.parent / "state/published/mine").is_dir()
    for page in ("/", f"/jobs/{job_id}", f"/compare?ids={job_id}", "/submit"):
        assert working.api("GET", page).status_code == 200, page


def test_cancel_stops_the_process_group_and_keeps_the_checkpoint_and_retry_runs_it_again(
    working: Server,
) -> None:
    job_id = submit(working, toy_yaml(samples=400_000, checkpoint_every_steps=20)).json()["id"]
    out = working.output.parent / "state/jobs" / str(job_id)
    wait_for(lambda: (out / "checkpoint.safetensors").is_file(), "a first checkpoint")
    pid = working.job(job_id)["pid"]
    assert working.api("POST", f"/api/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    wait_for(lambda: not group_members(pid), "the job's process group to stop", timeout=60)
    assert working.job(job_id)["state"] == "cancelled"
    assert load_file(out / "checkpoint.safetensors")  # committed, whole
    retried = wait_for(  # refused (422) until the stopped process is reaped
        lambda: (r := working.api("POST", f"/api/jobs/{job_id}/retry")).is_success and r.json(),
        "retry to be accepted", timeout=60)
    assert retried["state"] in ("queued", "running")
    wait_state(working, job_id, ("running",))
    assert working.api("POST", f"/api/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    assert "== attempt 2" in working.api("GET", f"/api/jobs/{job_id}/logs").text


@pytest.mark.slow
def test_a_train_job_with_two_ranks_runs_under_torchrun(tmp_path: Path) -> None:
    server = start_server(tmp_path / "state", "--workers", "1", env={"OMP_NUM_THREADS": "1"})
    try:
        body = toy_yaml(samples=20_000, device="cpu")
        job_id = server.api("POST", "/api/jobs", params={"kind": "train", "nproc": 2},
                            content=body).json()["id"]  # fmt: skip
        job = wait_state(server, job_id, ("done", "failed"), timeout=400)
        assert job["state"] == "done", server.api("GET", f"/api/jobs/{job_id}/logs").text[-3000:]
        assert job["metrics"]["arch"] == "topk"
    finally:
        stop_server(server)


def test_stopping_the_server_stops_its_running_jobs_and_queues_them_again(tmp_path: Path) -> None:
    server = start_server(tmp_path / "state", "--workers", "1")
    job_id = submit(server, toy_yaml(samples=400_000)).json()["id"]
    pid = wait_for(lambda: server.job(job_id)["pid"], "the job to start")
    stop_server(server)  # SIGTERM, as a service manager stops it
    assert server.process.returncode == 0 and "sae serve: stopped" in server.output.read_text()
    assert not group_members(pid)
    assert JobStore(tmp_path / "state" / "serve.db").get(job_id).state == "queued"
