"""`sae serve`: lock the state directory, recover what a crash left, start workers, serve."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from sae.errors import UserError, first_line
from sae.service.db import JobStore
from sae.service.runners import TOKEN_ENV, LocalRunner, Runner, SubmititRunner
from sae.service.state import StateDir, lock_state
from sae.service.workers import Workers

EXECUTORS = ("local", "slurm", "submitit-local")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_runner(executor: str, state: StateDir, slurm: dict[str, Any]) -> Runner:
    if executor == "local":
        return LocalRunner()
    # submitit-local: the Slurm path (submitit, requeue on preemption) on this machine
    cluster = "slurm" if executor == "slurm" else "local"
    return SubmititRunner(state.root / "submitit", cluster, slurm)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a taken port is one clear line (and port 0 works)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {first_line(error)}") from None
    return sock


def check_options(host: str, workers: int, token: str | None) -> None:
    if not is_loopback(host) and not token:
        raise UserError(
            f"--host {host} is reachable from other machines: give --token or set {TOKEN_ENV}"
        )
    if workers < 0:
        raise UserError(f"--workers must be 0 or more (got {workers})")


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGINT/SIGTERM once it has stopped, which would end this process
    before `serve` stops the jobs; here those signals only stop the server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(
    state_dir: Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
    token: str | None = None, executor: str = "local", slurm: dict[str, Any] | None = None,
) -> None:
    from sae.service.app import Service, create_app

    token = token or os.environ.get(TOKEN_ENV) or None
    check_options(host, workers, token)
    state = StateDir(state_dir.resolve()).create()
    lock = lock_state(state)
    sock = bind(host, port)
    store = JobStore(state.db)
    pool = Workers(store, state, make_runner(executor, state, slurm or {}), workers)
    recovered = pool.recover()
    app = create_app(Service(state, store, token, loopback=is_loopback(host)))
    # no access log: a request line is no place for anything a user typed into a URL
    # open event streams last as long as their job: shutdown waits a few seconds, not for them
    server = _Server(uvicorn.Config(
        app, access_log=False, log_level="warning", timeout_graceful_shutdown=5,
    ))  # fmt: skip
    shown = f"[{host}]" if ":" in host else host
    note = f"; resumed jobs {', '.join(map(str, recovered))}" if recovered else ""
    print(f"sae serve: http://{shown}:{sock.getsockname()[1]} (state {state.root}, "
          f"{workers} workers, executor {executor}{note})", flush=True)  # fmt: skip
    pool.start()
    try:
        server.run(sockets=[sock])
    finally:
        pool.stop()  # running jobs are stopped and queued again: the next start resumes them
        print("sae serve: stopped", flush=True)
        store.close()
        os.close(lock)
