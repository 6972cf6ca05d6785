"""Uploading published SAE folders to the Hugging Face Hub (`sae publish DIR --to hf://user/repo`).

Only with credentials the user has set up: the HF_TOKEN environment variable or a token saved
by `hf auth login` (huggingface_hub.get_token() finds either). Without them, the command stops
with one line saying so before writing anything.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from sae.errors import UserError

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


def upload_folders(repo: str, token: str, write: Callable[[Path], list[Path]]) -> list[str]:
    """`write(staging)` writes the folders into a temporary directory; all of them are then
    uploaded to model repository `repo` (created if missing) in one commit."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="sae-publish-") as tmp:
        folders = write(Path(tmp))
        api.create_repo(repo, repo_type="model", exist_ok=True)
        api.upload_folder(
            repo_id=repo,
            folder_path=tmp,
            repo_type="model",
            commit_message=f"Add SAEs: {', '.join(f.name for f in folders)}",
        )
    return [f"hf://{repo}/{folder.name}" for folder in folders]
