"""scripts/download_checkpoints.py against a local Hugging Face hub cache, fully offline (HF_HUB_OFFLINE and no
sockets): target folders and names, the pre-rename repo fallback, T5's PyTorch weights only, actionable access
errors, idempotence, and --convert with its memory / disk checks on the tiny parity DiT."""

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PARITY

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "download_checkpoints.py"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def dl():
    from scripts import download_checkpoints

    return download_checkpoints


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Offline by every route: the env (for subprocesses), huggingface_hub's constant (already imported) and no
    internet sockets at all."""
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access attempted: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def make_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """The real hub-cache layout: refs/main -> commit, snapshots/<commit>/<file> -> ../../blobs/<sha256>."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = repo / "snapshots" / COMMIT / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def run(dl, capsys, *argv):
    rc = dl.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_file()}


def test_repo_ids_match_the_configs_folders(dl):
    from configs import waymo

    for v in ("t2w", "v2w"):
        load_path = Path(waymo.VARIANTS[v]["load_path"])
        assert load_path.parent.name == dl.DIT_REPO.split("/")[1] == dl.DIT_FOLDER
        assert load_path.name == f"{v}_model_orbax"
    assert dl.DIT_REPO_OLD.split("/")[1] != dl.DIT_FOLDER  # spec §9: the old folder differs
    with pytest.raises(SystemExit):
        dl.parse_args(["--model_types", "t2w,bogus"])
    assert dl.parse_args([]).model_types == ["t2w", "v2w", "tokenizer", "t5"]


def test_each_model_type_lands_in_its_folder(dl, tmp_path, capsys, monkeypatch):
    cache, ckpt = tmp_path / "hub", tmp_path / "ckpt"
    make_cache(cache, dl.DIT_REPO, {"t2w_model.pt": b"t2w", "v2w_model.pt": b"v2w", "README.md": b"r",
                                    "model.pt": b"x"})
    make_cache(cache, dl.TOKENIZER_REPO, {"encoder.jit": b"e", "decoder.jit": b"d", "mean_std.pt": b"m",
                                          "config.json": b"{}", "autoencoder.jit": b"a", "image_mean_std.pt": b"i"})
    make_cache(cache, dl.T5_REPO, {"pytorch_model.bin": b"pt", "tf_model.h5": b"tf", "flax_model.msgpack": b"fx",
                                   "config.json": b"{}", "spiece.model": b"sp", "tokenizer.json": b"{}"})
    rc, out, err = run(dl, capsys, "--checkpoint_dir", str(ckpt), "--cache_dir", str(cache))
    assert rc == 0, err
    dit = ckpt / "Cosmos-Predict1-7B-Video2World-Sample-AV-Single2MultiView"
    assert names(dit) == {"t2w_model.pt", "v2w_model.pt"}
    assert (dit / "t2w_model.pt").read_bytes() == b"t2w" and (dit / "v2w_model.pt").read_bytes() == b"v2w"
    assert names(ckpt / "Cosmos-Tokenize1-CV8x8x8-720p") == {"encoder.jit", "decoder.jit", "mean_std.pt",
                                                             "config.json"}
    t5 = ckpt / "google-t5" / "t5-11b"
    assert names(t5) == {"pytorch_model.bin", "config.json", "spiece.model", "tokenizer.json"}  # no tf / flax
    assert (t5 / "pytorch_model.bin").read_bytes() == b"pt"
    assert f"from {dl.DIT_REPO} (HF cache)" in out and "tokenizer_config.json: not in" in out
    assert not any(p.is_symlink() for p in ckpt.rglob("*"))  # real files, not links into the cache
    assert sorted(p.name for p in ckpt.iterdir()) == ["Cosmos-Predict1-7B-Video2World-Sample-AV-Single2MultiView",
                                                      "Cosmos-Tokenize1-CV8x8x8-720p", "google-t5"]

    def no_network(*a, **k):
        raise AssertionError("fetch called for files that exist")

    monkeypatch.setattr(dl, "fetch", no_network)  # second run: idempotent, nothing fetched
    rc, out, _ = run(dl, capsys, "--checkpoint_dir", str(ckpt), "--cache_dir", str(cache))
    assert rc == 0 and out.count(": exists") == 2 + 4 + 4 and "absent (optional)" in out


def test_selected_types_only(dl, tmp_path, capsys):
    cache, ckpt = tmp_path / "hub", tmp_path / "ckpt"
    make_cache(cache, dl.DIT_REPO, {"t2w_model.pt": b"t2w", "v2w_model.pt": b"v2w"})
    rc, _, err = run(dl, capsys, "--checkpoint_dir", str(ckpt), "--cache_dir", str(cache), "--model_types", "v2w")
    assert rc == 0, err
    assert [str(p.relative_to(ckpt)) for p in ckpt.rglob("*.pt")] == [f"{dl.DIT_FOLDER}/v2w_model.pt"]


def test_falls_back_to_the_pre_rename_id_but_writes_the_new_folder(dl, tmp_path, capsys):
    cache, ckpt = tmp_path / "hub", tmp_path / "ckpt"
    make_cache(cache, dl.DIT_REPO_OLD, {"t2w_model.pt": b"old-t2w", "v2w_model.pt": b"old-v2w"})
    rc, out, err = run(dl, capsys, "--checkpoint_dir", str(ckpt), "--cache_dir", str(cache),
                       "--model_types", "t2w,v2w")
    assert rc == 0, err
    assert (ckpt / dl.DIT_FOLDER / "t2w_model.pt").read_bytes() == b"old-t2w"
    assert (ckpt / dl.DIT_FOLDER / "v2w_model.pt").read_bytes() == b"old-v2w"
    assert [p.name for p in ckpt.iterdir()] == [dl.DIT_FOLDER]
    assert f"not available from {dl.DIT_REPO}" in out and f"from {dl.DIT_REPO_OLD} (HF cache)" in out


def test_fallback_per_file_when_the_new_repo_lacks_one(dl, tmp_path, capsys):
    cache, ckpt = tmp_path / "hub", tmp_path / "ckpt"
    make_cache(cache, dl.DIT_REPO, {"t2w_model.pt": b"new-t2w"})
    make_cache(cache, dl.DIT_REPO_OLD, {"v2w_model.pt": b"old-v2w"})
    rc, out, err = run(dl, capsys, "--checkpoint_dir", str(ckpt), "--cache_dir", str(cache))
    assert rc == 1  # the tokenizer and T5 are not cached
    assert (ckpt / dl.DIT_FOLDER / "t2w_model.pt").read_bytes() == b"new-t2w"
    assert (ckpt / dl.DIT_FOLDER / "v2w_model.pt").read_bytes() == b"old-v2w"
    assert f"v2w_model.pt: from {dl.DIT_REPO_OLD}" in out
    assert dl.TOKENIZER_REPO in err and "HF_HUB_OFFLINE is set" in err and "not in the local Hugging Face cache" in err
    assert "[t5] pytorch_model.bin: google-t5/t5-11b" in err  # one failure does not stop the other types
    assert err.count("error: ") == 2


def test_neither_id_available_offline(dl, tmp_path, capsys):
    rc, _, err = run(dl, capsys, "--checkpoint_dir", str(tmp_path / "ckpt"), "--cache_dir", str(tmp_path / "hub"),
                     "--model_types", "t2w")
    assert rc == 1
    assert dl.DIT_REPO in err and dl.DIT_REPO_OLD in err and "HF_HUB_OFFLINE is set" in err
    assert f"https://huggingface.co/{dl.DIT_REPO}" in err and "huggingface-cli login" in err


def http_error(cls, status: int, repo_id: str):
    from huggingface_hub import errors

    http = sys.modules[errors.Response.__module__.split(".")[0]]
    resp = errors.Response(status, request=http.Request("GET", f"https://huggingface.co/{repo_id}/resolve/main/x"))
    return cls(f"{status} Client Error: access to model {repo_id} is restricted.", response=resp)


@pytest.mark.parametrize("model_type,repo_id", [
    ("t2w", "nvidia/Cosmos-Predict1-7B-Video2World-Sample-AV-Single2MultiView"),
    ("tokenizer", "nvidia/Cosmos-Tokenize1-CV8x8x8-720p"),
])
def test_gated_repo_without_login_is_actionable(dl, tmp_path, capsys, monkeypatch, model_type, repo_id):
    from huggingface_hub.errors import GatedRepoError

    calls = []

    def gated(repo, *a, **k):
        calls.append(repo)
        raise http_error(GatedRepoError, 401, repo)

    monkeypatch.setattr(dl, "fetch", gated)
    rc, _, err = run(dl, capsys, "--checkpoint_dir", str(tmp_path / "ckpt"), "--model_types", model_type)
    assert rc == 1 and calls == [repo_id]  # gated: the repo exists, so no fallback to the old id
    for s in (repo_id, "gated", f"https://huggingface.co/{repo_id}", "licence", "huggingface-cli login", "--token",
              "HF_TOKEN"):
        assert s in err, (s, err)


def test_http_401_403_are_actionable_other_errors_propagate(dl, tmp_path, capsys, monkeypatch):
    from huggingface_hub.errors import HfHubHTTPError

    for status in (401, 403):
        monkeypatch.setattr(dl, "fetch", lambda repo, *a, s=status, **k: (_ for _ in ()).throw(
            http_error(HfHubHTTPError, s, repo)))
        rc, _, err = run(dl, capsys, "--checkpoint_dir", str(tmp_path / "ckpt"), "--model_types", "t5")
        assert rc == 1 and f"HTTP {status}" in err and "https://huggingface.co/google-t5/t5-11b" in err

    monkeypatch.setattr(dl, "fetch", lambda repo, *a, **k: (_ for _ in ()).throw(
        http_error(HfHubHTTPError, 500, repo)))
    with pytest.raises(HfHubHTTPError):
        dl.main(["--checkpoint_dir", str(tmp_path / "ckpt"), "--model_types", "t5"])

    monkeypatch.setattr(dl, "fetch", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        dl.main(["--checkpoint_dir", str(tmp_path / "ckpt"), "--model_types", "t2w"])


def test_cli_subprocess_uses_hf_env(dl, tmp_path):
    """As a script, with the cache found through HF_HUB_CACHE and HF_HUB_OFFLINE=1 from the environment."""
    make_cache(tmp_path / "hub", dl.TOKENIZER_REPO, {"encoder.jit": b"e", "decoder.jit": b"d", "mean_std.pt": b"m"})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, str(SCRIPT), "--checkpoint_dir", str(tmp_path / "ckpt"),
                        "--model_types", "tokenizer"], env=env, capture_output=True, text=True, cwd=tmp_path,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert names(tmp_path / "ckpt" / "Cosmos-Tokenize1-CV8x8x8-720p") == {"encoder.jit", "decoder.jit",
                                                                          "mean_std.pt"}
    assert "config.json: not in" in p.stdout


@pytest.fixture
def tiny_dit_cache(dl, tmp_path, monkeypatch):
    from tests.conftest import tiny_experiment_config

    make_cache(tmp_path / "hub", dl.DIT_REPO, {"t2w_model.pt": (PARITY / "dit_tiny.pt").read_bytes()})
    monkeypatch.setattr(dl, "config_for", lambda variant: tiny_experiment_config())
    return tmp_path / "hub"


def test_convert_writes_the_configs_load_path_folder(dl, tmp_path, capsys, tiny_dit_cache):
    from cosmos_jax.weights import folder

    ckpt = tmp_path / "ckpt"
    argv = ["--checkpoint_dir", str(ckpt), "--cache_dir", str(tiny_dit_cache), "--model_types", "t2w", "--convert"]
    rc, out, err = run(dl, capsys, *argv)
    assert rc == 0, err
    dst = ckpt / dl.DIT_FOLDER / "t2w_model_orbax"
    meta = folder.read_meta(str(dst))
    assert meta["num_blocks"] == 2 and meta["source"] == str((ckpt / dl.DIT_FOLDER / "t2w_model.pt").resolve())
    assert "tensors=54" in out and "--config.checkpoint.load_path=" in out  # ckpt is not ./checkpoints
    stamp = (dst / "meta.json").stat().st_mtime_ns
    rc, out, _ = run(dl, capsys, *argv)  # idempotent
    assert rc == 0 and f"{dst}: exists" in out and (dst / "meta.json").stat().st_mtime_ns == stamp
    # the format string of folders converted before weights/ existed: they still load
    assert json.loads((dst / "meta.json").read_text())["format"] == folder.MARKER.format == "cosmos_jax.base_weights/1"


def test_convert_refuses_without_memory_or_disk(dl, tmp_path, capsys, monkeypatch, tiny_dit_cache):
    ckpt = tmp_path / "ckpt"
    argv = ["--checkpoint_dir", str(ckpt), "--cache_dir", str(tiny_dit_cache), "--model_types", "t2w", "--convert"]
    monkeypatch.setattr(dl, "mem_available_bytes", lambda *a: 50 << 20)
    rc, _, err = run(dl, capsys, *argv)
    assert rc == 1 and "not enough memory" in err and "MemAvailable is 0.05 GiB" in err
    assert "python -m converters.dit_to_orbax" in err
    assert (ckpt / dl.DIT_FOLDER / "t2w_model.pt").is_file()  # the download itself went through
    assert not (ckpt / dl.DIT_FOLDER / "t2w_model_orbax").exists()

    monkeypatch.setattr(dl, "mem_available_bytes", lambda *a: 64 << 30)
    monkeypatch.setattr(dl, "disk_free_bytes", lambda *a: 1 << 20)
    rc, _, err = run(dl, capsys, *argv)
    assert rc == 1 and "not enough disk" in err and not (ckpt / dl.DIT_FOLDER / "t2w_model_orbax").exists()


def test_resource_readers_and_estimate(dl, tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       16000000 kB\nMemFree:         1000 kB\nMemAvailable:    2048 kB\n")
    assert dl.mem_available_bytes(str(f)) == 2048 * 1024
    assert dl.mem_available_bytes(str(tmp_path / "missing")) is None
    if os.path.exists("/proc/meminfo"):
        assert dl.mem_available_bytes() > 0
    assert dl.disk_free_bytes(str(tmp_path / "not" / "yet")) > 0  # nearest existing parent
    assert dl.ram_needed_bytes(14 << 30, 28) == 2 << 30  # the 7B bf16 release: ~2 GiB
    assert dl.ram_needed_bytes(28 << 30, 28) == (2 << 30) + (1 << 29)  # fp32: two 1 GiB blocks + overhead


class FakeHub:
    """Stands in for huggingface_hub's two download functions with the Hub's behaviour (online, nothing cached), to
    check what fetch() asks for: local_dir, allow_patterns, token, and no TF/Flax weights."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos, self.calls = repos, []

    def _repo(self, repo_id):
        from huggingface_hub.errors import RepositoryNotFoundError

        if repo_id not in self.repos:
            raise http_error(RepositoryNotFoundError, 404, repo_id)
        return self.repos[repo_id]

    def hf_hub_download(self, repo_id, filename, *, cache_dir=None, local_files_only=False, local_dir=None,
                        token=None):
        from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        self.calls.append(("file", repo_id, filename, local_dir, token))
        files = self._repo(repo_id)
        if filename not in files:
            raise http_error(RemoteEntryNotFoundError, 404, repo_id)
        (Path(local_dir) / filename).write_bytes(files[filename])
        return str(Path(local_dir) / filename)

    def snapshot_download(self, repo_id, *, allow_patterns=None, local_dir=None, token=None):
        import fnmatch

        self.calls.append(("snapshot", repo_id, tuple(allow_patterns), local_dir, token))
        for name, data in self._repo(repo_id).items():
            if any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (Path(local_dir) / name).write_bytes(data)
        return local_dir


def test_online_path_requests(dl, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    hub = FakeHub({dl.DIT_REPO_OLD: {"t2w_model.pt": b"old"},
                   dl.T5_REPO: {"pytorch_model.bin": b"pt", "tf_model.h5": b"tf", "flax_model.msgpack": b"fx",
                                "config.json": b"{}", "spiece.model": b"sp", "README.md": b"r"}})
    monkeypatch.setattr(dl, "hf_hub_download", hub.hf_hub_download)
    monkeypatch.setattr(dl, "snapshot_download", hub.snapshot_download)
    ckpt = tmp_path / "ckpt"
    rc, out, err = run(dl, capsys, "--checkpoint_dir", str(ckpt), "--model_types", "t5,t2w", "--token", "tok")
    assert rc == 0, err
    t5, dit = str(ckpt / "google-t5" / "t5-11b"), str(ckpt / dl.DIT_FOLDER)
    assert hub.calls == [
        ("snapshot", dl.T5_REPO, ("config.json", "spiece.model", "tokenizer.json", "tokenizer_config.json"), t5, "tok"),
        ("file", dl.T5_REPO, "pytorch_model.bin", t5, "tok"),
        ("file", dl.DIT_REPO, "t2w_model.pt", dit, "tok"),  # RepositoryNotFoundError -> the pre-rename id
        ("file", dl.DIT_REPO_OLD, "t2w_model.pt", dit, "tok"),
    ]
    assert names(Path(t5)) == {"pytorch_model.bin", "config.json", "spiece.model"}
    assert (Path(dit) / "t2w_model.pt").read_bytes() == b"old" and f"from {dl.DIT_REPO_OLD} (downloaded)" in out

    # The new repo exists but lacks the file (EntryNotFoundError): same fallback; in neither: an error naming both.
    hub.repos[dl.DIT_REPO] = {"t2w_model.pt": b"new"}
    hub.calls.clear()
    rc, out, err = run(dl, capsys, "--checkpoint_dir", str(ckpt), "--model_types", "v2w")
    assert rc == 1 and [c[1] for c in hub.calls] == [dl.DIT_REPO, dl.DIT_REPO_OLD]
    assert "RemoteEntryNotFoundError" in err and dl.DIT_REPO_OLD in err and "HF_HUB_OFFLINE" not in err
    assert f"https://huggingface.co/{dl.DIT_REPO}" in err
