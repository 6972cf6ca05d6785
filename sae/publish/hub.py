"""Uploading published SAE folders to the Hugging Face Hub (`sae publish DIR --to hf://user/repo`).

Only with credentials the user has set up: the HF_TOKEN environment variable or a token saved
by `hf auth login` (huggingface_hub.get_token() finds either). Without them, the command stops
with one line saying so before writing anything.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sae.errors import UserError, first_line

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def hub_token(repo: str) -> str:
    """The user's Hugging Face token, after checking that `repo` is a `user/name` id."""
    if not REPO_ID.match(repo):
        raise UserError(f"--to hf://{repo}: expected hf://<user or organisation>/<repository>")
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise UserError(
            "no Hugging Face credentials found: set the HF_TOKEN environment variable to a "
            "token with write access, or run `hf auth login` (formerly `huggingface-cli login`)"
        )
    return token


# Bounds on every request to the Hub. huggingface_hub's own client waits forever (timeout=None):
# an endpoint that accepts and never answers held `sae publish` for over 400 s with no output.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0  # between bytes of a response, not the whole upload
ATTEMPTS = 3
RETRY_WAIT_S = 2.0  # doubled after each failed attempt


def upload_folders(repo: str, token: str, write: Callable[[Path], list[Path]]) -> list[str]:
    """`write(staging)` writes the folders into a temporary directory; all of them are then
    uploaded to model repository `repo` (created if missing) in one commit.

    Every request has a time limit; a network failure is retried ATTEMPTS times, each retry
    announced on stderr, and the last failure is one line (UserError). The endpoint is
    HF_ENDPOINT when set (read now, not when huggingface_hub was imported)."""
    from huggingface_hub import HfApi

    endpoint = os.environ.get("HF_ENDPOINT") or None
    api = HfApi(token=token, endpoint=endpoint)
    with tempfile.TemporaryDirectory(prefix="sae-publish-") as tmp, _bounded_client():
        folders = write(Path(tmp))

        def upload() -> None:
            api.create_repo(repo, repo_type="model", exist_ok=True)
            api.upload_folder(
                repo_id=repo,
                folder_path=tmp,
                repo_type="model",
                commit_message=f"Add SAEs: {', '.join(f.name for f in folders)}",
            )

        _with_retries(upload, endpoint or "https://huggingface.co")
    return [f"hf://{repo}/{folder.name}" for folder in folders]


@contextmanager
def _bounded_client() -> Iterator[None]:
    """huggingface_hub's shared HTTP client, with time limits, for the duration of a publish."""
    import httpx2
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import default_client_factory, hf_request_event_hook

    timeout = httpx2.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)

    def bounded() -> httpx2.Client:
        return httpx2.Client(
            event_hooks={"request": [hf_request_event_hook]}, follow_redirects=True, timeout=timeout
        )

    set_client_factory(bounded)
    try:
        yield
    finally:
        set_client_factory(default_client_factory)


def _with_retries(call: Callable[[], None], endpoint: str) -> None:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    wait = RETRY_WAIT_S
    for attempt in range(1, ATTEMPTS + 1):
        try:
            call()
            return
        except HfHubHTTPError as error:  # the Hub answered: retrying will not change it
            raise UserError(f"the Hugging Face Hub refused the upload: {first_line(error)}") from None
        except (httpx2.TransportError, OSError) as error:
            reason = f"{type(error).__name__}: {first_line(error)}"
            if attempt == ATTEMPTS:
                raise UserError(
                    f"cannot reach the Hugging Face Hub at {endpoint} ({reason}) after "
                    f"{ATTEMPTS} attempts; nothing was published there"
                ) from None
            print(
                f"sae: the Hub at {endpoint} did not answer ({reason}); retrying in {wait:g} s "
                f"(attempt {attempt + 1} of {ATTEMPTS})",
                file=sys.stderr,
            )
            time.sleep(wait)
            wait *= 2
