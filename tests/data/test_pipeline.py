"""The grain stream: independent of the process count, resumable mid-epoch."""

import numpy as np
import pytest

from cosmos_jax.data import dataset, pipeline
from tests.data import fixtures as fx


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = fx.build(str(tmp_path_factory.mktemp("ds")), clips=(12, 11))
    return dataset.MultiviewWindows(dataset.DataSpec.from_config(fx.config(root)))


def take(it, n):
    return [next(it) for _ in range(n)]


def key(batch):
    return [(int(w), tuple(v)) for w, v in zip(batch["window"], batch["view_choice"], strict=True)]


def test_stream_does_not_depend_on_process_count(source):
    one = take(pipeline.make_iterator(source, seed=3, global_batch=4), 3)
    ranks = [take(pipeline.make_iterator(source, seed=3, global_batch=4, dp_rank=r, dp_size=2), 3) for r in (0, 1)]
    for step in range(3):
        # rank 0 holds the first half of the global batch, rank 1 the second, row for row
        assert key(one[step]) == key(ranks[0][step]) + key(ranks[1][step])
    # every window is visited once per epoch (7 windows), and epochs reshuffle
    windows = [w for b in one for w, _ in key(b)][:7]
    assert sorted(windows) == list(range(7))


def test_resume_mid_epoch_gives_the_same_next_batches(source):
    it = pipeline.make_iterator(source, seed=1, global_batch=2)
    take(it, 2)
    state = it.get_state()
    expected = take(it, 3)
    resumed = pipeline.make_iterator(source, seed=1, global_batch=2)
    resumed.set_state(state)
    got = take(resumed, 3)
    for a, b in zip(expected, got, strict=True):
        assert key(a) == key(b)
        np.testing.assert_array_equal(a["video"], b["video"])
        np.testing.assert_array_equal(a["text"], b["text"])


def test_batch_shapes_and_seed(source):
    b = next(pipeline.make_iterator(source, seed=0, global_batch=2))
    assert b["video"].shape == (2, 3, 9, 16, 32, 3) and b["text"].shape == (2, 3, 512, fx.D)
    assert b["fps"].shape == (2,) and b["view_idx"].shape == (2, 3)
    other = next(pipeline.make_iterator(source, seed=5, global_batch=2))
    assert key(b) != key(other)
    with pytest.raises(ValueError, match="not divisible"):
        pipeline.make_dataset(source, 0, 3, 0, 2)
