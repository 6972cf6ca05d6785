"""Read batches ahead on a background thread, without giving up exact resume.

The producer thread takes a batch from the wrapped stream and, right after it, a snapshot of
that stream's state; both travel together through a bounded queue. `state_dict()` returns the
snapshot that belongs to the last batch the consumer took, so a checkpoint names exactly the
next unseen batch, however far ahead the thread has read. Loading a state stops the thread,
drops what it read ahead, and positions the wrapped stream; reading restarts on the next batch.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Callable
from typing import Any

from sae.streams import BatchStream

_POLL_SECONDS = 0.1


class Prefetcher(BatchStream):
    def __init__(
        self, inner: BatchStream, depth: int = 2, transform: Callable[[Any], Any] | None = None
    ):
        """`depth` batches are read ahead; `transform` runs on each in the background (e.g.
        pinning host memory for an asynchronous copy to the GPU)."""
        if depth < 1:
            raise ValueError("prefetch depth must be at least 1")
        self.inner, self.depth, self.transform = inner, depth, transform
        self._state = copy.deepcopy(inner.state_dict())
        self._queue: queue.Queue[tuple[Any, Any, BaseException | None]] = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __next__(self) -> Any:
        if self._error is not None:
            raise self._error
        if self._thread is None:
            self._start()
        batch, state, error = self._queue.get()
        if error is not None:
            self._error = error
            self._halt()
            raise error
        self._state = state
        return batch

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._halt()
        self.inner.load_state_dict(state)
        self._state = copy.deepcopy(state)
        self._error = None

    def close(self) -> None:
        self._halt()
        self.inner.close()

    # ------------------------------------------------------------------ the thread

    def _start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._produce, name="sae-prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        while not self._stop.is_set():
            try:
                batch = next(self.inner)
                if self.transform is not None:
                    batch = self.transform(batch)
                item = (batch, copy.deepcopy(self.inner.state_dict()), None)
            except BaseException as error:  # handed to the consumer, raised there
                item = (None, None, error)
            if not self._put(item) or item[2] is not None:
                return

    def _put(self, item: tuple[Any, Any, BaseException | None]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _halt(self) -> None:
        """Stop the thread and forget what it read ahead."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        while not self._queue.empty():
            self._queue.get_nowait()
