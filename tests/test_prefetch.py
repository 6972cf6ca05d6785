"""Reading ahead on a background thread changes nothing a training run can observe."""

import threading

import pytest
import torch

from sae.errors import DataError
from sae.sources.prefetch import Prefetcher
from sae.streams import BatchStream


class Counting(BatchStream):
    """Batch i is filled with i; fails at batch `fail_at` if given."""

    def __init__(self, fail_at: int | None = None):
        self.n, self.fail_at = 0, fail_at

    def __next__(self) -> torch.Tensor:
        if self.n == self.fail_at:
            raise DataError(f"shard {self.n} is corrupt")
        self.n += 1
        return torch.full((2, 3), float(self.n - 1))

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.n = state["n"]


def first_values(stream: BatchStream, count: int) -> list[float]:
    return [float(next(stream)[0, 0]) for _ in range(count)]


def test_state_names_the_next_unseen_batch_however_far_the_thread_read() -> None:
    stream = Prefetcher(Counting(), depth=4)
    assert first_values(stream, 3) == [0.0, 1.0, 2.0]
    state = stream.state_dict()
    assert state == {"n": 3}, "the thread has read ahead, the state must not have"
    rest = first_values(stream, 5)
    stream.close()

    resumed = Prefetcher(Counting(), depth=4)
    resumed.load_state_dict(state)
    assert first_values(resumed, 5) == rest == [3.0, 4.0, 5.0, 6.0, 7.0]
    resumed.close()


def test_loading_a_state_mid_stream_drops_what_was_read_ahead() -> None:
    stream = Prefetcher(Counting(), depth=3)
    first_values(stream, 4)
    stream.load_state_dict({"n": 1})
    assert first_values(stream, 2) == [1.0, 2.0]
    assert stream.state_dict() == {"n": 3}
    stream.close()


def test_an_error_in_the_reader_reaches_the_consumer_in_order() -> None:
    stream = Prefetcher(Counting(fail_at=2), depth=4)
    assert first_values(stream, 2) == [0.0, 1.0]
    with pytest.raises(DataError, match="shard 2 is corrupt"):
        next(stream)
    assert stream.state_dict() == {"n": 2}
    stream.close()


def test_close_stops_the_reader_thread() -> None:
    stream = Prefetcher(Counting(), depth=2)
    next(stream)
    stream.close()
    assert not any(t.name == "sae-prefetch" and t.is_alive() for t in threading.enumerate())
