"""Process groups on Linux: identify a process across a server crash, and stop its group.

A job runs in its own session (its pid is its process group id), so stopping the group stops
torchrun's ranks and anything else the job started. A pid alone could be reused by an
unrelated process after a crash, so a job's process is recorded as (pid, start time).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

PROC = Path("/proc")


def _stat(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    return [text[: text.index(" ")], "comm", *text[text.rindex(")") + 2 :].split()]


def start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None if it is gone (a
    zombie, dead but not yet reaped, counts as gone)."""
    fields = _stat(pid)
    return fields[21] if fields and fields[2] != "Z" else None


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`."""
    members = []
    for entry in PROC.iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and fields[4] == str(pgid) and fields[2] != "Z":
            members.append(int(entry.name))
    return members


def alive(pid: int, pid_start: str | None) -> bool:
    """Whether the process recorded as (pid, start time), or any of its group, still runs."""
    return (pid_start is not None and start_time(pid) == pid_start) or bool(group_members(pid))


def stop_group(pgid: int, grace: float = 10.0) -> None:
    """SIGTERM the group, SIGKILL whatever is left after `grace` seconds, wait until it is gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not group_members(pgid):
                return
            time.sleep(0.05)


def stop_orphan(pid: int, pid_start: str) -> None:
    """Kill the group a crashed server left behind, if `pid` is still that same process, and
    wait until none of it runs: only then may the job start again."""
    if start_time(pid) == pid_start:
        stop_group(pid, grace=0.0)
    elif group_members(pid):
        stop_group(pid, grace=0.0)  # the leader is gone but its ranks live on


def wait_gone(pid: int, timeout: float = 60.0) -> None:
    """Wait until `pid` no longer runs (a zombie counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = _stat(pid)
        if fields is None or fields[2] == "Z":
            return
        time.sleep(0.05)
