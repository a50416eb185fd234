"""The grain pipeline: windows -> per-epoch shuffle -> sample at global stream position p -> this process's share
-> batches.

Global position p = step * global_batch + i. Its window comes from a per-epoch permutation (grain shuffle, seeded)
and its random view choice from `np.random.default_rng([seed, p])`, so the global stream is a function of
(seed, step, global sample index) only. Data-parallel rank r of n reads the contiguous rows [r * B/n, (r + 1) * B/n)
of every global batch (positions step * B + r * B/n + j): concatenated in rank order, the ranks' batches are the
one-process batch row for row, so per-row noise and losses do not depend on the process count. The iterator's
state (the next position) is saved with the checkpoint and restored exactly.
"""

from __future__ import annotations

import grain
import numpy as np

from cosmos_jax.data.dataset import MultiviewWindows


def sample_rng(seed: int, position: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(position)])


def make_dataset(source: MultiviewWindows, seed: int, global_batch: int, dp_rank: int = 0, dp_size: int = 1
                 ) -> grain.MapDataset:
    """An infinite MapDataset of this data-parallel rank's batches (index = step)."""
    if global_batch % dp_size:
        raise ValueError(f"batch_size={global_batch} is not divisible by {dp_size} data-parallel groups")
    windows = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat(None)
    samples = windows.map_with_index(lambda p, w: source.sample(int(w), sample_rng(seed, p)))
    local = global_batch // dp_size
    # local index q -> global position (q // local) * B + rank * local + q % local (one process: q itself)
    positions = grain.MapDataset.range(len(samples) // dp_size).map(
        lambda q: (q // local) * global_batch + dp_rank * local + q % local)
    return positions.map(lambda p: samples[int(p)]).batch(local, drop_remainder=True)


def make_iterator(source: MultiviewWindows, seed: int, global_batch: int, dp_rank: int = 0, dp_size: int = 1,
                  num_threads: int = 2, prefetch: int = 2) -> grain.DatasetIterator:
    """The batch iterator (threads decode ahead); `get_state()` / `set_state()` for checkpoints."""
    ds = make_dataset(source, seed, global_batch, dp_rank, dp_size)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)))
