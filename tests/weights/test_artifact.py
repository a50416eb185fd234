"""The marker of a complete converted folder: written last, removed first, its format checked, its absence
explained with the command that makes the folder."""

import json
import os

import numpy as np
import pytest

from cosmos_jax.weights import artifact, folder
from cosmos_jax.weights import t5 as t5_weights
from cosmos_jax.weights import tokenizer as tokenizer_weights

KIND = artifact.Artifact("test.kind/1", "converted test folder", "python -m converters.make --dst {folder}")


def test_missing_marker_names_the_folder_and_the_command(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        KIND.read(str(tmp_path))
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path}: not a complete converted test folder (no meta.json)")
    assert msg.endswith(f"make it with python -m converters.make --dst {tmp_path}")
    with pytest.raises(FileNotFoundError, match=rf"^tokenizer.checkpoint_dir={tmp_path}: not a complete"):
        KIND.read(str(tmp_path), setting="tokenizer.checkpoint_dir")
    for kind, command in ((artifact.DIT, "converters.dit_to_orbax"),
                          (artifact.TOKENIZER, "converters.tokenizer_to_orbax"),
                          (artifact.T5, "converters.t5_to_orbax")):
        with pytest.raises(FileNotFoundError, match=rf"{tmp_path}: .*python -m {command} .*--dst {tmp_path}$"):
            kind.read(str(tmp_path))


def test_wrong_format_and_bad_json_are_refused(tmp_path):
    KIND.finish(str(tmp_path), {"n": 1})
    assert KIND.read(str(tmp_path)) == {"format": "test.kind/1", "n": 1}
    other = artifact.Artifact("test.kind/2", "converted test folder", "x")
    with pytest.raises(ValueError, match=r"meta.json: format 'test.kind/1', expected 'test.kind/2'"):
        other.read(str(tmp_path))
    (tmp_path / "meta.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="format 'list', expected"):
        KIND.read(str(tmp_path))
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="meta.json: not valid JSON"):
        KIND.read(str(tmp_path))


def test_rewrite_removes_the_marker_first_and_writes_it_last(tmp_path):
    dst = str(tmp_path / "out")
    os.makedirs(dst)
    meta = KIND.finish(dst, {"source": "a"})
    assert KIND.marked(dst) and json.loads(open(KIND.path(dst)).read()) == meta
    with pytest.raises(FileExistsError, match="--overwrite"):
        KIND.refuse_overwrite(dst, overwrite=False)
    KIND.refuse_overwrite(dst, overwrite=True)
    KIND.begin(dst)  # a rewrite starts: until `finish`, the folder is not complete
    assert not KIND.marked(dst) and os.listdir(dst) == []
    KIND.finish(dst, {"source": "b"})
    assert KIND.read(dst)["source"] == "b" and sorted(os.listdir(dst)) == ["meta.json"]  # no temporary file left


def test_each_folder_kind_has_its_marker():
    """The formats of the folders on disk: changing one would orphan every folder already converted."""
    assert folder.MARKER is artifact.DIT and artifact.DIT.format == "cosmos_jax.base_weights/1"
    assert tokenizer_weights.MARKER is artifact.TOKENIZER
    assert artifact.TOKENIZER.format == "cosmos_jax.cosmos_tokenizer/1"
    assert t5_weights.MARKER is artifact.T5 and artifact.T5.format == "cosmos_jax.t5/1"
    assert artifact.T5.marker == "config.json" and artifact.DIT.marker == artifact.TOKENIZER.marker == "meta.json"


def test_an_interrupted_conversion_does_not_look_complete(tmp_path):
    """folder.write removes the marker before the first block and writes it after the last one."""
    dst = str(tmp_path / "w")
    folder.write(dst, {("params", "a"): np.ones(2, np.float32)}, [], {"source": "first"})
    assert folder.read_meta(dst)["num_blocks"] == 0

    def blocks():
        assert not folder.MARKER.marked(dst)  # removed before anything else is written
        yield {("params", "net", "blocks", "w"): np.ones(2, np.float32)}
        raise OSError("disk died")

    with pytest.raises(OSError, match="disk died"):
        folder.write(dst, {("params", "a"): np.ones(2, np.float32)}, blocks(), {"source": "second"})
    with pytest.raises(FileNotFoundError, match="not a complete"):
        folder.read_meta(dst)
