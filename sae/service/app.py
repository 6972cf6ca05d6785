"""The FastAPI app: the JSON API under /api (its contract is /openapi.json) and the pages.

Every error a client can cause answers one line, `{"error": "..."}`; anything unexpected
answers 500 with no traceback (the server's log has it). With a token, every request but the
login form must carry it, as `Authorization: Bearer TOKEN` or the cookie the login form sets.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import subprocess
import tempfile
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.background import BackgroundTask

from sae.errors import UserError
from sae.service import pages, processes
from sae.service.command import TORCHRUN_KINDS, cli_command
from sae.service.db import KINDS, STATES, TERMINAL, Job, JobStore
from sae.service.jobs import JobViews
from sae.service.progress import METRICS_LOG, progress, read_records
from sae.service.runners import child_env
from sae.service.state import StateDir
from sae.service.submit import validate_submission

STATIC = Path(__file__).parent / "static"
COOKIE = "sae_token"
MAX_BODY_BYTES = 1 << 20  # a config is a few KB; this bounds what one request can make us hold
EVENT_POLL_SECONDS = 0.5
LOG_TAIL_BYTES = 200_000
PUBLISH_TIMEOUT_SECONDS = 3600


@dataclass
class Service:
    state: StateDir
    store: JobStore
    token: str | None = None
    max_body: int = MAX_BODY_BYTES
    loopback: bool = True  # bound to 127.0.0.1 (or ::1)


class PublishRequest(BaseModel):
    to: str  # a folder name under STATE/published, or hf://user/repository


class Refused(Exception):
    """A request refused with a status and one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it exceeds `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"request body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Refused(413, f"request body over {limit} bytes")
    return bytes(body)


def create_app(service: Service) -> FastAPI:
    # no /docs or /redoc: FastAPI's pages load their scripts from a CDN, and the UI works offline
    app = FastAPI(title="sae serve", version="1", summary="SAE training jobs: submit, watch, compare",
                  docs_url=None, redoc_url=None)  # fmt: skip
    views = JobViews(service.state)
    listings: dict[str, Any] = {}  # the last listing of jobs that no longer change
    state, store = service.state, service.store

    def job_or_404(job_id: int) -> Job:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job

    def submit(body: bytes, kind: str, nproc: int) -> list[int]:
        if not 1 <= nproc <= 64:
            raise UserError(f"nproc must be 1 to 64 (got {nproc})")
        if nproc > 1 and kind not in TORCHRUN_KINDS:
            raise UserError(f"nproc > 1 runs under torchrun, which sae {kind} does not join "
                            f"(sae {' and sae '.join(TORCHRUN_KINDS)} do)")  # fmt: skip
        jobs = validate_submission(body, kind, state)
        return store.add(kind, jobs, nproc=nproc, sweep=len(jobs) > 1 or bool(jobs[0].params))

    # ------------------------------------------------------------------ errors and auth

    @app.exception_handler(UserError)
    async def _user_error(request: Request, error: UserError) -> JSONResponse:
        return _error(422, str(error))

    @app.exception_handler(Refused)
    async def _refused(request: Request, error: Refused) -> JSONResponse:
        return _error(error.status, str(error))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return _error(422, f"{where}: {first['msg']}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        return _error(500, "internal error (see the server's log)")

    @app.middleware("http")
    async def _check_token(request: Request, call_next: Any) -> Response:
        if refused := _foreign(request, service.loopback):
            return _error(403, refused)
        if service.token is None or request.url.path == "/login":
            return await call_next(request)
        given = request.cookies.get(COOKIE) or ""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        if hmac.compare_digest(given.encode(), service.token.encode()):
            return await call_next(request)
        if request.url.path.startswith("/api/") or request.url.path == "/openapi.json":
            return _error(401, "missing or wrong token (Authorization: Bearer TOKEN)")
        return RedirectResponse("/login", status_code=303)

    # ------------------------------------------------------------------ API

    @app.post("/api/jobs", status_code=201, summary="Submit a YAML config (a sweep if it has lists)")
    async def create_job(
        request: Request, kind: str = Query(..., description="|".join(KINDS)), nproc: int = 1
    ) -> dict[str, Any]:
        body = await read_body(request, service.max_body)
        ids = await asyncio.to_thread(submit, body, kind, nproc)
        return {"id": ids[0], "ids": ids, "sweep": ids[0] if len(ids) > 1 else None}

    @app.get("/api/jobs", summary="Jobs, newest first, filtered by state, kind or sweep",
             response_class=JSONResponse, responses={200: {"description": "a list of jobs as "
             "GET /api/jobs/{job_id} answers them, without config and artifacts"}})  # fmt: skip
    def list_jobs(
        state: str | None = Query(None, description="|".join(STATES)),
        kind: str | None = None, sweep: int | None = None, limit: int | None = Query(None, ge=1),
    ) -> Response:
        # with no job running, the answer changes only when the database does
        key = (store.version, state, kind, sweep, limit)
        if listings.get("key") != key:
            jobs = store.list(state, kind, sweep, limit=limit, config=False)
            body = views.listing(jobs)
            still = not any(job.state == "running" for job in jobs)
            listings.clear()
            listings.update({"key": key, "body": body} if still else {})
        else:
            body = listings["body"]
        return Response(body, media_type="application/json")

    @app.get("/api/jobs/{job_id}", summary="A job: config, state, progress, metrics, artifacts")
    def get_job(job_id: int) -> dict[str, Any]:
        return views.detail(job_or_404(job_id))

    @app.post("/api/jobs/{job_id}/cancel", summary="Stop a queued or running job")
    def cancel_job(job_id: int) -> dict[str, Any]:
        job_or_404(job_id)
        return views.summary(store.cancel(job_id))  # type: ignore[arg-type]

    @app.post("/api/jobs/{job_id}/retry", summary="Queue a failed or cancelled job again")
    def retry_job(job_id: int) -> dict[str, Any]:
        job = job_or_404(job_id)
        if job.pid is not None and processes.alive(job.pid, job.pid_start):
            # a cancelled job's process gets a grace period to stop; a second run must not
            # start in the same directory before it has
            raise UserError(f"job {job_id}'s process is still stopping; retry in a moment")
        return views.summary(store.retry(job_id))  # type: ignore[arg-type]

    @app.get("/api/jobs/{job_id}/logs", response_class=PlainTextResponse, summary="stdout+stderr")
    def job_logs(job_id: int, tail: int = Query(LOG_TAIL_BYTES, ge=1)) -> str:
        job_or_404(job_id)
        path = state.log_file(job_id)
        if not path.is_file():
            return ""
        with open(path, "rb") as file:
            file.seek(max(0, file.seek(0, 2) - min(tail, LOG_TAIL_BYTES)))
            return file.read().decode(errors="replace")

    @app.get("/api/jobs/{job_id}/curve", summary="Training records: step, loss, L0, EV, dead")
    def job_curve(job_id: int) -> list[dict[str, Any]]:
        job_or_404(job_id)
        records, _ = read_records(state.out_dir(job_id) / METRICS_LOG)
        return records

    @app.get("/api/jobs/{job_id}/events", summary="Server-sent events: state, progress, end")
    async def job_events(job_id: int) -> StreamingResponse:
        job_or_404(job_id)
        return StreamingResponse(_events(job_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})  # fmt: skip

    async def _events(job_id: int) -> AsyncIterator[str]:
        offset, last_state = 0, None
        while True:
            job = await asyncio.to_thread(store.get, job_id)
            if job is None:
                return
            if job.state != last_state:
                last_state = job.state
                yield _sse("state", {"id": job_id, "state": job.state})
            records, offset = await asyncio.to_thread(
                read_records, state.out_dir(job_id) / METRICS_LOG, offset
            )
            if records:
                now = progress(job, state.out_dir(job_id), records[-1])
                yield _sse("progress", {**now, "records": records})
            if job.state in TERMINAL:
                yield _sse("end", await asyncio.to_thread(views.summary, job))
                return
            await asyncio.sleep(EVENT_POLL_SECONDS)

    @app.get("/api/jobs/{job_id}/files/{path:path}", summary="One file of the run (report.html…)")
    def job_file(job_id: int, path: str) -> FileResponse:
        job_or_404(job_id)
        out = state.out_dir(job_id)
        try:
            target = StateDir(out).inside(Path(path), "file")
        except UserError:
            raise HTTPException(404, f"no file {path}") from None
        if not target.is_file():
            raise HTTPException(404, f"no file {path}")
        return FileResponse(target)

    @app.get("/api/jobs/{job_id}/download", summary="An SAE's SAELens folder as a zip")
    def download(job_id: int, sae: str = "sae") -> FileResponse:
        job_or_404(job_id)
        folders = views.detail(job_or_404(job_id))["saelens"]
        if sae not in folders:
            raise HTTPException(404, f"job {job_id} has no SAELens folder for '{sae}' "
                                f"(has: {', '.join(folders) or 'none yet'})")  # fmt: skip
        folder = state.out_dir(job_id) / folders[sae]
        handle, name = tempfile.mkstemp(suffix=".zip", dir=state.root)
        with open(handle, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    archive.write(file, Path(f"job{job_id}-{sae}") / file.relative_to(folder))
        return FileResponse(name, filename=f"job{job_id}-{sae}.zip", media_type="application/zip",
                            background=BackgroundTask(Path(name).unlink))  # fmt: skip

    @app.post("/api/jobs/{job_id}/publish", summary="`sae publish` to a local folder or hf://")
    def publish(job_id: int, request: PublishRequest) -> dict[str, Any]:
        job = job_or_404(job_id)
        if job.state != "done":
            raise UserError(f"job {job_id} is {job.state}; only a done job can be published")
        to = request.to.strip()
        if not to.startswith("hf://"):
            to = str(state.inside(state.published / to, "publish folder"))
        command = cli_command("publish", str(state.out_dir(job_id)), "--to", to)
        done = subprocess.run(command, cwd=state.root, env=child_env(), capture_output=True,
                              text=True, timeout=PUBLISH_TIMEOUT_SECONDS)  # fmt: skip
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            raise UserError(lines[-1].removeprefix("sae: error: ") if lines else "publish failed")
        return {"published": [line.removeprefix("published ") for line in done.stdout.splitlines()
                              if line.startswith("published ")]}  # fmt: skip

    # ------------------------------------------------------------------ pages

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def jobs_page(state_filter: str | None = Query(None, alias="state")) -> str:
        jobs = [views.summary(job) for job in store.list(state_filter, limit=500)]
        return pages.jobs_page(jobs)

    @app.get("/submit", response_class=HTMLResponse, include_in_schema=False)
    def submit_form() -> str:
        return pages.submit_page()

    @app.post("/submit", include_in_schema=False)
    async def submit_page(request: Request) -> Response:
        form = parse_qs((await read_body(request, service.max_body)).decode(errors="replace"))
        kind = (form.get("kind") or ["toy"])[0]
        text = (form.get("config") or [""])[0]
        try:
            ids = await asyncio.to_thread(submit, text.encode(), kind, 1)
        except UserError as error:
            return HTMLResponse(pages.submit_page(text, kind, str(error)), status_code=422)
        return RedirectResponse(f"/jobs/{ids[0]}" if len(ids) == 1 else f"/compare?sweep={ids[0]}",
                                status_code=303)  # fmt: skip

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    def job_page(job_id: int) -> str:
        return pages.job_page(views.detail(job_or_404(job_id)))

    @app.get("/compare", response_class=HTMLResponse, include_in_schema=False)
    def compare_page(
        ids: Annotated[list[str] | None, Query()] = None, sweep: int | None = None
    ) -> str:
        wanted = [int(p) for text in ids or [] for p in text.split(",") if p.strip().isdigit()]
        jobs = store.list(sweep=sweep) if sweep is not None else store.list(ids=wanted)
        chosen = sorted(jobs, key=lambda job: job.id)
        curves = {job.id: read_records(state.out_dir(job.id) / METRICS_LOG)[0] for job in chosen}
        return pages.compare_page([views.detail(job) for job in chosen], curves, sweep)

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form() -> str:
        return pages.login_page()

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = parse_qs((await read_body(request, 4096)).decode(errors="replace"))
        given = (form.get("token") or [""])[0]
        if service.token is None or not hmac.compare_digest(given.encode(), service.token.encode()):
            return HTMLResponse(pages.login_page("wrong token"), status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, given, httponly=True, samesite="strict")
        return response

    return app


LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]")


def _foreign(request: Request, loopback: bool) -> str | None:
    """Why a request that a web page elsewhere made through the user's browser is refused.

    Without a token, anything that reaches 127.0.0.1 is trusted, so two browser tricks are
    closed here: another site's page posting to this server (its Origin is not this server)
    and DNS rebinding (a Host other than a loopback name)."""
    host = request.headers.get("host", "")
    if loopback and host.rsplit(":", 1)[0] not in LOCAL_NAMES:
        return f"Host '{host}' is not this server"
    origin = request.headers.get("origin")
    if request.method not in ("GET", "HEAD") and origin and origin.split("://", 1)[-1] != host:
        return f"cross-site request from {origin} refused"
    return None


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"

