"""`sae submit CONFIG`: send a config to a running `sae serve`, optionally watch it finish."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from sae.errors import ConfigError, UserError, first_line
from sae.service.db import TERMINAL
from sae.service.runners import TOKEN_ENV

DEFAULT_SERVER = "http://127.0.0.1:8000"
PRINT_EVERY_SECONDS = 2.0


def _headers(token: str | None) -> dict[str, str]:
    token = token or os.environ.get(TOKEN_ENV)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _answer(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code >= 400:
        raise UserError(body.get("error") if isinstance(body, dict) and body.get("error")
                        else f"the server answered {response.status_code}")  # fmt: skip
    return body


def submit(config: Path, server: str, kind: str, nproc: int, token: str | None) -> list[int]:
    if not config.is_file():
        raise ConfigError(f"config file not found: {config}")
    try:
        response = httpx.post(f"{server.rstrip('/')}/api/jobs", params={"kind": kind, "nproc": nproc},
                              content=config.read_bytes(), headers=_headers(token), timeout=60)  # fmt: skip
    except httpx.HTTPError as error:
        raise UserError(f"cannot reach sae serve at {server}: {first_line(error)}") from None
    return list(_answer(response)["ids"])


def events(server: str, job_id: int, token: str | None) -> Iterator[tuple[str, Any]]:
    """(event, data) from a job's server-sent events until its `end`."""
    url = f"{server.rstrip('/')}/api/jobs/{job_id}/events"
    with httpx.stream("GET", url, headers=_headers(token), timeout=httpx.Timeout(60, read=None)) as r:
        if r.status_code >= 400:
            r.read()
            _answer(r)
        event = "message"
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                yield event, json.loads(line[6:])


def _progress_line(job_id: int, p: dict[str, Any]) -> str:
    eta = p.get("eta_seconds")
    parts = [f"job {job_id}: {100 * (p.get('fraction') or 0):.0f}%", f"step {p.get('step')}"]
    parts += [f"{k} {p[k]:.4g}" for k in ("loss", "l0", "explained_variance", "dead_fraction")
              if isinstance(p.get(k), int | float)]  # fmt: skip
    return ", ".join(parts) + (f", ETA {eta:.0f}s" if eta is not None else "")


def watch(server: str, job_id: int, token: str | None) -> str:
    """Print a job's progress until it ends; its final state."""
    last_print, final = 0.0, "unknown"
    for event, data in events(server, job_id, token):
        if event == "state" and data["state"] not in TERMINAL:  # `end` reports those
            print(f"job {job_id}: {data['state']}", flush=True)
        elif event == "progress" and time.monotonic() - last_print >= PRINT_EVERY_SECONDS:
            last_print = time.monotonic()
            print(_progress_line(job_id, data), flush=True)
        elif event == "end":
            final = data["state"]
            error = f": {data['error']}" if data.get("error") else ""
            print(f"job {job_id}: {final}{error}", flush=True)
    return final


def run_submit(config: Path, server: str | None, kind: str, nproc: int, do_watch: bool,
               token: str | None) -> int:  # fmt: skip
    server = server or os.environ.get("SAE_SERVER") or DEFAULT_SERVER
    ids = submit(config, server, kind, nproc, token)
    print(f"submitted job{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}", flush=True)
    if not do_watch:
        return 0
    finals = [watch(server, job_id, token) for job_id in ids]
    return 0 if all(state == "done" for state in finals) else 1



