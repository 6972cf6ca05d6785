"""A real `sae serve` in a child process for the service tests: started on a free port of
127.0.0.1, stopped by its own pid, every wait bounded."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import tiny_tree

STARTUP_SECONDS = 60
URL = re.compile(r"sae serve: (http://127\.0\.0\.1:\d+)")


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    output: Path

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("timeout", 60)
        return httpx.request(method, f"{self.url}{path}", **kwargs)

    def job(self, job_id: int) -> dict[str, Any]:
        return self.api("GET", f"/api/jobs/{job_id}").json()


def start_server(state: Path, *args: str, env: dict[str, str] | None = None) -> Server:
    output = state.parent / f"{state.name}-server-{time.monotonic_ns()}.txt"
    command = [sys.executable, "-m", "sae", "serve", "--state", str(state), "--port", "0", *args]
    with open(output, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})  # fmt: skip
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if match := URL.search(output.read_text()):
            return Server(match.group(1), process, output)
        if process.poll() is not None:
            raise AssertionError(f"sae serve exited: {output.read_text()[-2000:]}")
        time.sleep(0.05)
    stop_server(Server("", process, output))
    raise AssertionError(f"sae serve did not start: {output.read_text()[-2000:]}")


def stop_server(server: Server, sig: int = signal.SIGTERM) -> None:
    if server.process.poll() is None:
        os.kill(server.process.pid, sig)
    try:
        server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=30)


def wait_for(check: Callable[[], Any], what: str, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def wait_state(server: Server, job_id: int, states: tuple[str, ...], timeout: float = 240) -> dict:
    return wait_for(
        lambda: (job := server.job(job_id))["state"] in states and job,
        f"job {job_id} to reach {states}", timeout,
    )


def toy_yaml(samples: int = 12_000, **train: Any) -> str:
    """The tests' tiny synthetic config, shorter still: a service job is mostly start-up."""
    tree = tiny_tree()
    tree["train"].update(samples=samples, **train)
    tree["eval"]["samples"] = 2048
    return yaml.safe_dump(tree)
