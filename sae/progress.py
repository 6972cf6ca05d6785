"""Progress that reaches a person whether or not stderr is a terminal.

On a terminal, a tqdm bar. Anywhere else (nohup, a batch job, `2> log`), tqdm shows nothing, so
a run of minutes printed nothing until its final table; there a `LineProgress` prints one line
every ~10 s or 5% of the work, whichever comes first:

    [train topk] 1,200/5,000 step (24%)  310 step/s  ETA 12s  mse=0.0123 l0=16.0 ev=0.91

`stage` prints each stage's start and end, on a terminal too, so a log shows where time went.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any, TypeVar

T = TypeVar("T")
EVERY_SECONDS = 10.0
EVERY_FRACTION = 0.05


def _seconds(value: float) -> str:
    if value < 10:
        return f"{value:.1f}s"
    value = int(round(value))
    if value < 60:
        return f"{value}s"
    minutes, seconds = divmod(value, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


class LineProgress:
    """The subset of tqdm's interface the pipelines use (update, set_postfix, n, close)."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str,
        initial: int = 0,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.stream, self.clock = stream, clock
        self.postfix: dict[str, Any] = {}
        self.started = self.last_time = clock()
        self.start_n = self.last_n = initial

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        step = max(1, int(self.total * EVERY_FRACTION)) if self.total else None
        due_by_work = step is not None and self.n - self.last_n >= step
        if due_by_work or now - self.last_time >= EVERY_SECONDS:
            self._print(now)

    def close(self) -> None:
        if self.n != self.last_n:
            self._print(self.clock())

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = (self.n - self.start_n) / elapsed
        done = f"{self.n:,}"
        if self.total:
            done += f"/{self.total:,} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            done += f" {self.unit}"
        parts = [f"[{self.desc}] {done}", f"{rate:,.1f} {self.unit}/s"]
        if self.total and rate > 0:
            parts.append(f"ETA {_seconds((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(" ".join(f"{k}={v}" for k, v in self.postfix.items()))
        return "  ".join(parts)

    def _print(self, now: float) -> None:
        self.last_time, self.last_n = now, self.n
        print(self.line(now), file=self.stream or sys.stderr, flush=True)


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(
    total: int | None, desc: str, unit: str, enabled: bool, initial: int = 0, **tqdm_args: Any
) -> Any:
    """A tqdm bar on a terminal, a LineProgress elsewhere; a silent bar when not `enabled`."""
    from tqdm import tqdm

    if enabled and not _is_terminal(sys.stderr):
        return LineProgress(total, desc, unit, initial)
    return tqdm(
        total=total, initial=initial, desc=desc, unit=unit, disable=not enabled,
        dynamic_ncols=True, **tqdm_args,
    )  # fmt: skip


def progress_iter(
    items: Iterable[T], total: int | None, desc: str, unit: str, enabled: bool
) -> Iterator[T]:
    bar = progress_bar(total, desc, unit, enabled)
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()


@contextmanager
def stage(name: str, enabled: bool = True, clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """`sae: <name> ...` before, `sae: <name> done in 12s` after (nothing if it fails: the
    error line says why)."""
    if not enabled:
        yield
        return
    print(f"sae: {name} ...", file=sys.stderr, flush=True)
    started = clock()
    yield
    print(f"sae: {name} done in {_seconds(clock() - started)}", file=sys.stderr, flush=True)
