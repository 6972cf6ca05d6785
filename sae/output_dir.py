"""Owning an output directory: `sae toy`, `sae train` and `sae run` write only where they may.

An --out directory is either new (missing or empty) or one this tool made: the first file a
run writes there is a marker (`.sae-run.json`, the run's identity). Anything else holds someone
else's files, which a run would overwrite (metrics.json, sae/, report.html) or mistake for its
own results; it is refused with one line before any work. A file lock (as the store writer's)
keeps a second training out of a directory one is training into. A run that fails before it
wrote anything but the marker takes the marker, the lock and the directory away again, so a
failed first attempt leaves no debris that a user would have to clean up.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sae.errors import UserError

MARKER = ".sae-run.json"
LOCK = ".lock"  # the store writer's name: one convention for "a process is writing here"
FORMAT = "sae-run"
_OURS = {MARKER, LOCK}
# the marker's temporary file while sae.io.atomic_write writes it (another torchrun rank may
# look at the directory at that instant)
_MARKER_TMP = re.compile(rf"^\.{re.escape(MARKER)}\.tmp-\d+$")


def _ours(name: str) -> bool:
    return name in _OURS or bool(_MARKER_TMP.match(name))


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The identity in `directory`'s marker; None when there is none (or it is unreadable)."""
    try:
        value = json.loads((Path(directory) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and value.get("format") == FORMAT else None


def check_output_dir(directory: Path) -> None:
    """Refuse (UserError) an --out that is a file, or a non-empty directory this tool did not
    make. Reads only, so the CLI calls it before any import or work."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"--out {directory} exists and is not a directory")
    if not directory.is_dir():
        return
    foreign = sorted(entry.name for entry in directory.iterdir() if not _ours(entry.name))
    if foreign and read_marker(directory) is None:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UserError(
            f"--out {directory} is not empty and was not made by sae (no {MARKER}); "
            f"refusing to write next to {shown}: give a new or empty directory"
        )


def check_writable_dir(path: Path, flag: str = "--out") -> None:
    """`path` is, or can be made, a writable directory; a UserError naming `flag` if not."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} exists and is not a directory")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{flag} {path}: directory {parent} is not writable")


def check_run_dir(path: Path) -> None:
    """An output directory for a training run: writable, and new or made by sae. Checked
    before any work; claim_output_dir takes it when the run starts."""
    check_output_dir(path)
    check_writable_dir(path)


@contextmanager
def claim_output_dir(
    directory: Path, command: str, owner: bool = True
) -> Iterator[dict[str, Any] | None]:
    """Hold `directory` for one run of `command`: checked, locked, marked; yields the identity.

    `owner` False (ranks other than 0 under torchrun): rank 0 holds it for all; yields None.
    """
    if not owner:
        yield None
        return
    directory = Path(directory)
    check_output_dir(directory)
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(directory / LOCK, "a")  # noqa: SIM115 (held until the run ends)
    except OSError as error:
        raise UserError(f"--out {directory}: cannot write there ({error.strerror})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(
            f"another process is training into --out {directory}; wait for it or give "
            "another directory"
        ) from None
    try:
        check_output_dir(directory)  # again, now that no other run can be writing here
        fresh = all(_ours(entry.name) for entry in directory.iterdir())
        identity = read_marker(directory) or _write_marker(directory, command)
        try:
            yield identity
        except BaseException:
            if fresh:
                _remove_debris(directory, created)
            raise
    finally:
        handle.close()


def _write_marker(directory: Path, command: str) -> dict[str, Any]:
    from sae.io import atomic_write_json

    identity = {
        "format": FORMAT,
        "version": 1,
        "command": command,
        "run_id": uuid.uuid4().hex,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    atomic_write_json(directory / MARKER, identity)
    return identity


def _remove_debris(directory: Path, created: bool) -> None:
    """After a failed first attempt: take away what holds no result (empty files such as a
    metrics.jsonl with no record yet, empty folders); then, if only the marker and the lock
    are left, those too, and the directory itself if this run created it."""
    for entry in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if entry.is_symlink() or entry.parent == directory and entry.name in _OURS:
            continue
        if entry.is_dir() and not any(entry.iterdir()):
            entry.rmdir()
        elif entry.is_file() and entry.stat().st_size == 0:
            entry.unlink()
    if any(entry.name not in _OURS for entry in directory.iterdir()):
        return  # this attempt left results (a checkpoint): the directory stays marked
    for name in _OURS:
        (directory / name).unlink(missing_ok=True)
    if created:
        directory.rmdir()
