"""Embedding pickles: a malicious pickle cannot run, every writer variant reads."""

import os
import pickle

import numpy as np
import pytest

from cosmos_jax.data import pickles


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([Evil(marker)]))
    with pytest.raises(pickles.UnsafePickleError, match=r"evil\.pkl.*(posix|os)\.system"):
        pickles.read_embedding(str(path))
    assert not marker.exists()
    # and the plain pickle module would have run it: the test input is really malicious
    pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("name,obj", [
    ("raw", np.ones((4, 8), np.float32)),
    ("list", [np.ones((4, 8), np.float32)]),
    ("tuple", (np.ones((4, 8), np.float32),)),
    ("batched", np.ones((1, 4, 8), np.float32)),
    ("list_batched", [np.ones((1, 4, 8), np.float32)]),
    ("float16", [np.ones((4, 8), np.float16)]),
    ("float64", np.ones((4, 8), np.float64)),
    ("curate_dict", {"camera_view": "pinhole_front", "prefix_embedding": np.ones((4, 8), np.float32),
                     "embedding_shape": (4, 8)}),
])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_writer_variants(tmp_path, name, obj, protocol):
    path = tmp_path / f"{name}.pickle"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    arr = pickles.read_embedding(str(path), width=8)
    assert arr.shape == (4, 8) and arr.dtype == np.float32 and np.all(arr == 1)


def test_wrong_width_and_shape_name_the_file(tmp_path):
    p = tmp_path / "w.pkl"
    p.write_bytes(pickle.dumps([np.ones((4, 6), np.float32)]))
    with pytest.raises(pickles.BadEmbeddingError, match=r"w\.pkl: embedding width 6, expected 8"):
        pickles.read_embedding(str(p), width=8)
    p.write_bytes(pickle.dumps([np.ones((2, 4, 6), np.float32)]))
    with pytest.raises(pickles.BadEmbeddingError, match=r"w\.pkl: embedding has shape \(2, 4, 6\)"):
        pickles.read_embedding(str(p))
    p.write_bytes(b"\x80\x04garbage")
    with pytest.raises(pickles.BadEmbeddingError, match=r"w\.pkl: not a readable pickle"):
        pickles.read_embedding(str(p))


def test_prefix_names(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "prefix_t5_embeddings_pinhole_front.pickle").write_bytes(pickle.dumps([np.zeros((2, 8))]))
    found = pickles.find_existing(pickles.prefix_candidates(str(tmp_path), "pinhole_front"))
    assert found.endswith("prefix_t5_embeddings_pinhole_front.pickle")
    (cache / "prefix_pinhole_front.pkl").write_bytes(pickle.dumps(np.zeros((2, 8))))
    found = pickles.find_existing(pickles.prefix_candidates(str(tmp_path), "pinhole_front"))
    assert found.endswith("prefix_pinhole_front.pkl")  # the loader's own name wins


def test_pad_and_truncate():
    emb, mask = pickles.pad_tokens(np.ones((3, 2), np.float32), 5)
    assert emb.shape == (5, 2) and mask.tolist() == [1, 1, 1, 0, 0] and emb[3:].sum() == 0
    emb, mask = pickles.pad_tokens(np.arange(14, dtype=np.float32).reshape(7, 2), 5)
    assert emb.shape == (5, 2) and mask.sum() == 5 and emb[-1, 0] == 8
