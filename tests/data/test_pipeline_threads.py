"""data.num_workers read threads: each decodes one sample, so N workers have N samples in flight."""

import logging
import threading
import time

import grain
import numpy as np
import pytest

from cosmos_jax.data import pipeline

DELAY = 0.2


class SlowSource:
    """A source whose every sample takes `delay` seconds (like a decode, which releases the GIL)."""

    def __init__(self, n=40, delay=DELAY):
        self.n, self.delay, self.active, self.peak = n, delay, 0, 0
        self._lock = threading.Lock()

    def __len__(self):
        return self.n

    def sample(self, index, rng):
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(self.delay)
        with self._lock:
            self.active -= 1
        return {"window": np.int64(index), "view_choice": rng.permutation(3).astype(np.int32),
                "skipped": np.int32(0)}


def grain_prefetch_warnings(caplog):
    return [r for r in caplog.records if "smaller than num_threads" in r.getMessage()]


def test_no_prefetch_warning(caplog):
    caplog.set_level(logging.WARNING)
    grain.ReadOptions(num_threads=8, prefetch_buffer_size=2)  # the warning is caught here when it is emitted
    assert len(grain_prefetch_warnings(caplog)) == 1
    caplog.clear()
    for batch, workers in ((1, 8), (4, 16), (8, 8)):
        next(pipeline.make_iterator(SlowSource(), seed=0, global_batch=batch, num_threads=workers))
    assert grain_prefetch_warnings(caplog) == []


@pytest.mark.parametrize("batch,steps", [(8, 1), (1, 8)])
def test_workers_decode_samples_concurrently(batch, steps):
    src = SlowSource()
    it = pipeline.make_iterator(src, seed=0, global_batch=batch, num_threads=8)
    t = time.perf_counter()
    got = [next(it) for _ in range(steps)]
    dt = time.perf_counter() - t
    assert dt < 3 * DELAY, f"8 samples took {dt:.2f}s with 8 workers (one at a time: {8 * DELAY:.1f}s)"
    assert src.peak >= 6 and all(b["window"].shape == (batch,) for b in got)


def test_state_counts_batches_and_restores_with_samples_in_flight():
    src = SlowSource(n=30, delay=0.01)
    it = pipeline.make_iterator(src, seed=2, global_batch=4, num_threads=8, prefetch=3)
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    assert state == {"next_index": 3}  # batches (steps), though up to 12 more samples are decoded ahead
    want = [next(it) for _ in range(2)]
    resumed = pipeline.make_iterator(src, seed=2, global_batch=4, num_threads=3)
    resumed.set_state(state)
    got = [next(resumed) for _ in range(2)]
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a["window"], b["window"])
        np.testing.assert_array_equal(a["view_choice"], b["view_choice"])
    # the threaded stream is the thread-free MapDataset of batches, batch for batch
    ref = pipeline.make_dataset(src, seed=2, global_batch=4)
    for step, b in enumerate(first + want):
        np.testing.assert_array_equal(b["window"], ref[step]["window"])
