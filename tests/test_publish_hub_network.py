"""`sae publish --to hf://` against endpoints that fail: every request has a time limit, a
network failure is retried with a message, and the last one is one line. The endpoints are
sockets on 127.0.0.1 that this test opens: nothing leaves the machine."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.cli import main
from sae.publish import hub
from tests.test_publish import fake_run


@pytest.fixture
def quick_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seconds instead of minutes, so that the failing cases end quickly."""
    monkeypatch.setattr(hub, "CONNECT_TIMEOUT_S", 0.5)
    monkeypatch.setattr(hub, "READ_TIMEOUT_S", 0.5)
    monkeypatch.setattr(hub, "RETRY_WAIT_S", 0.01)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def refusing_endpoint() -> str:
    """A port on 127.0.0.1 where nothing listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A socket on 127.0.0.1 that accepts connections (the kernel's backlog does) and never
    answers a byte. It closes after a minute at most, so that a client without time limits
    fails this test instead of hanging it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    backstop = threading.Timer(60, sock.close)
    backstop.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        backstop.cancel()
        sock.close()


@pytest.mark.parametrize("endpoint", ["refusing_endpoint", "silent_endpoint"])
def test_a_failing_hub_is_retried_then_one_line(
    endpoint: str,
    quick_limits: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    url = request.getfixturevalue(endpoint)
    monkeypatch.setenv("HF_ENDPOINT", url)
    run = fake_run(tmp_path / "run")
    assert main(["publish", str(run), "--to", "hf://someone/saes"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    retries, last = err[:-1], err[-1]
    assert len(retries) == hub.ATTEMPTS - 1
    assert all("retrying" in line and url in line for line in retries)
    assert last.startswith("sae: error: cannot reach the Hugging Face Hub at " + url)
    assert f"after {hub.ATTEMPTS} attempts" in last
