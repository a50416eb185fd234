"""The grain pipeline: windows -> per-epoch shuffle -> sample at global stream position p -> this process's share
-> read threads (one sample each) -> batches.

Global position p = step * global_batch + i. Its window comes from a per-epoch permutation (grain shuffle, seeded)
and its random view choice from `np.random.default_rng([seed, p])`, so the global stream is a function of
(seed, step, global sample index) only. Data-parallel rank r of n reads the contiguous rows [r * B/n, (r + 1) * B/n)
of every global batch (positions step * B + r * B/n + j): concatenated in rank order, the ranks' batches are the
one-process batch row for row, so per-row noise and losses do not depend on the process count. The iterator's
state (the next position) is saved with the checkpoint and restored exactly.

`num_threads` (data.num_workers) samples are decoded at once: the thread pool reads single samples (the
torch DataLoader's num_workers, each worker one sample with upstream's batch 1 per GPU) and batching follows, so
a batch of B is decoded by min(B, num_threads) threads, not by one.
"""

from __future__ import annotations

import grain
import numpy as np

from cosmos_jax.data.dataset import MultiviewWindows


def sample_rng(seed: int, position: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(position)])


def make_samples(source: MultiviewWindows, seed: int, global_batch: int, dp_rank: int = 0, dp_size: int = 1
                 ) -> grain.MapDataset:
    """An infinite MapDataset of this data-parallel rank's samples, in batch order (index = step * B/n + row)."""
    if global_batch % dp_size:
        raise ValueError(f"batch_size={global_batch} is not divisible by {dp_size} data-parallel groups")
    windows = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat(None)
    samples = windows.map_with_index(lambda p, w: source.sample(int(w), sample_rng(seed, p)))
    local = global_batch // dp_size
    # local index q -> global position (q // local) * B + rank * local + q % local (one process: q itself)
    positions = grain.MapDataset.range(len(samples) // dp_size).map(
        lambda q: (q // local) * global_batch + dp_rank * local + q % local)
    return positions.map(lambda p: samples[int(p)])


def make_dataset(source: MultiviewWindows, seed: int, global_batch: int, dp_rank: int = 0, dp_size: int = 1
                 ) -> grain.MapDataset:
    """An infinite MapDataset of this data-parallel rank's batches (index = step), read without threads."""
    local = global_batch // max(dp_size, 1)
    return make_samples(source, seed, global_batch, dp_rank, dp_size).batch(local, drop_remainder=True)


class BatchIterator:
    """Batches from the threaded sample iterator. The state counts batches ({"next_index": steps read}), as
    before batching moved after the threads, so checkpoints of either version resume at the same position."""

    def __init__(self, samples: grain.IterDataset, local: int):
        self._local = local
        self._it = iter(samples.batch(local, drop_remainder=True))

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._it)

    def get_state(self) -> dict:
        n = self._it.get_state()["next_index"]
        assert n % self._local == 0, f"sample iterator inside a batch ({n} samples of {self._local} per batch)"
        return {"next_index": n // self._local}

    def set_state(self, state: dict) -> None:
        self._it.set_state({"next_index": int(state["next_index"]) * self._local})

    def close(self) -> None:
        self._it.close()


def make_iterator(source: MultiviewWindows, seed: int, global_batch: int, dp_rank: int = 0, dp_size: int = 1,
                  num_threads: int = 2, prefetch: int = 2) -> BatchIterator:
    """The batch iterator: `num_threads` threads decode one sample each, `prefetch` batches ahead (the buffer,
    in samples, is never below num_threads, which would cap the threads in use); `get_state()` / `set_state()`
    for checkpoints."""
    samples = make_samples(source, seed, global_batch, dp_rank, dp_size)
    local = global_batch // dp_size
    buffer = max(num_threads, prefetch * local)
    read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=buffer)
    return BatchIterator(samples.to_iter_dataset(read), local)
