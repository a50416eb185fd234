"""Download the released weights from Hugging Face (+ opt-in conversion of the DiT to Orbax).

    python scripts/download_checkpoints.py --checkpoint_dir checkpoints [--model_types t2w,v2w,tokenizer,t5]
        [--convert] [--token TOKEN] [--cache_dir DIR]

  t2w, v2w   nvidia/Cosmos-Predict1-7B-Video2World-Sample-AV-Single2MultiView: t2w_model.pt / v2w_model.pt
             (falls back to the pre-rename id nvidia/Cosmos-Predict1-7B-SingleToMultiView-Sample-AV, but always
             writes into the folder the configs load from: docs/upstream.md §9)
             -> CHECKPOINT_DIR/Cosmos-Predict1-7B-Video2World-Sample-AV-Single2MultiView/
  tokenizer  nvidia/Cosmos-Tokenize1-CV8x8x8-720p: encoder.jit, decoder.jit, mean_std.pt (+ config.json)
             -> CHECKPOINT_DIR/Cosmos-Tokenize1-CV8x8x8-720p/
  t5         google-t5/t5-11b: pytorch_model.bin (+ config.json, spiece.model, tokenizer.json, tokenizer_config.json
             where the repo has them; never tf_model.h5 / flax_model.msgpack) -> CHECKPOINT_DIR/google-t5/t5-11b/

Files already in the target folder are skipped ("exists"). A file already in the local Hugging Face cache
(HF_HUB_CACHE, e.g. from `hf download`) is hard-linked (or copied) from there; anything else is downloaded straight
into the target folder (`local_dir=`, no second copy in the cache). `--convert` then turns t2w/v2w_model.pt into the
Orbax base weights that configs/waymo.py's `checkpoint.load_path` names (..._model_orbax), after checking memory and
disk. The token comes from --token, HF_TOKEN or `hf auth login` / `huggingface-cli login`.

Exit status 0 on success, 1 on an access, download or resource problem (the message says what to do).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from huggingface_hub import constants as hf_constants  # noqa: E402
from huggingface_hub import hf_hub_download, snapshot_download  # noqa: E402
from huggingface_hub.utils import (  # noqa: E402
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

from configs import waymo  # noqa: E402
from cosmos_jax.weights import artifact  # noqa: E402

GiB = 1 << 30

# The DiT folder and the converted folders come from the configs (their checkpoint.load_path), never retyped here.
DIT_FOLDER = Path(waymo.VARIANTS["t2w"]["load_path"]).parent.name
assert all(Path(v["load_path"]).parent.name == DIT_FOLDER for v in waymo.VARIANTS.values()), waymo.VARIANTS
DIT_REPO = "nvidia/Cosmos-Predict1-7B-Video2World-Sample-AV-Single2MultiView"  # after the June 2025 rename
DIT_REPO_OLD = "nvidia/Cosmos-Predict1-7B-SingleToMultiView-Sample-AV"  # before it
assert DIT_REPO.split("/")[1] == DIT_FOLDER, (DIT_REPO, DIT_FOLDER)  # the configs load from the new id's folder
TOKENIZER_REPO = "nvidia/Cosmos-Tokenize1-CV8x8x8-720p"
T5_REPO = "google-t5/t5-11b"

# model type -> (repo ids in order of preference, folder under --checkpoint_dir, required files, optional files)
MODELS = {
    "t2w": ((DIT_REPO, DIT_REPO_OLD), DIT_FOLDER, ("t2w_model.pt",), ()),
    "v2w": ((DIT_REPO, DIT_REPO_OLD), DIT_FOLDER, ("v2w_model.pt",), ()),
    "tokenizer": ((TOKENIZER_REPO,), TOKENIZER_REPO.split("/")[1], ("encoder.jit", "decoder.jit", "mean_std.pt"),
                  ("config.json",)),
    "t5": ((T5_REPO,), T5_REPO, ("pytorch_model.bin",),
           ("config.json", "spiece.model", "tokenizer.json", "tokenizer_config.json")),
}
DIT_TYPES = ("t2w", "v2w")


class DownloadError(Exception):
    """A problem the user can act on; main() prints it and exits 1."""


# ----------------------------------------------------------------------------------------------------- network


def _offline() -> bool:
    return bool(getattr(hf_constants, "HF_HUB_OFFLINE", False))


def fetch(repo_id: str, required: list[str], optional: list[str], local_dir: str, *, token: str | None = None,
          cache_dir: str | None = None) -> dict[str, str]:
    """The only function that talks to the Hub. Puts the named files of `repo_id` into `local_dir` and returns
    {name: "HF cache" | "downloaded"} for those it placed. `required` files raise when absent (huggingface_hub's
    errors: RepositoryNotFoundError, GatedRepoError, EntryNotFoundError, LocalEntryNotFoundError when offline or the
    Hub is unreachable and the file is not cached, HfHubHTTPError); `optional` ones (fetched with allow_patterns)
    are just left out when the repo does not have them."""
    got: dict[str, str] = {}
    os.makedirs(local_dir, exist_ok=True)
    for name in [*required, *optional]:  # 1. already in the local Hugging Face cache: no network at all
        try:
            cached = hf_hub_download(repo_id, name, cache_dir=cache_dir, local_files_only=True)
        except LocalEntryNotFoundError:
            continue
        _place(cached, os.path.join(local_dir, name))
        got[name] = "HF cache"
    rest = [n for n in optional if n not in got]
    if rest and not _offline():  # 2. the Hub, straight into local_dir: the small optional files first, then weights
        try:
            snapshot_download(repo_id, allow_patterns=rest, local_dir=local_dir, token=token)
        except LocalEntryNotFoundError:
            pass  # offline and not cached: optional files are simply absent
        got.update({n: "downloaded" for n in rest if os.path.isfile(os.path.join(local_dir, n))})
    for name in required:
        if name not in got:
            hf_hub_download(repo_id, name, local_dir=local_dir, token=token)
            got[name] = "downloaded"
    return got


def _place(src: str, dst: str) -> None:
    """Hard-link a cached file into place (no extra disk), copying when the cache is on another file system."""
    src, tmp = os.path.realpath(src), dst + ".incomplete"
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


# ---------------------------------------------------------------------------------------------------- download


def _login_hint(repo_id: str) -> str:
    return (f"accept the licence at https://huggingface.co/{repo_id} (logged in as the account you will use), then "
            f"log in with `hf auth login` (older huggingface_hub: `huggingface-cli login`), or pass --token TOKEN / "
            "set HF_TOKEN")


def _access_error(repo_id: str, e: Exception) -> DownloadError | None:
    """The actionable message for an access problem, or None when `e` is not one (it is then re-raised)."""
    if isinstance(e, GatedRepoError):
        return DownloadError(f"{repo_id} is a gated repository and this request is not authorised for it "
                             f"({type(e).__name__}). To fix: {_login_hint(repo_id)}.")
    if isinstance(e, RepositoryNotFoundError):
        return DownloadError(f"{repo_id} was not found or is not accessible with the current credentials "
                             f"({type(e).__name__}; the Hub answers 'not found' to unauthenticated requests for "
                             f"private or gated repos). Check the id; if the repo is gated: {_login_hint(repo_id)}.")
    if isinstance(e, LocalEntryNotFoundError):
        why = ("HF_HUB_OFFLINE is set" if _offline() else "the Hub could not be reached (network or Hub problem)")
        return DownloadError(f"{repo_id}: {why} and the file is not in the local Hugging Face cache "
                             f"({hf_constants.HF_HUB_CACHE} or --cache_dir). Go online (unset HF_HUB_OFFLINE) and "
                             f"retry; if the repo is gated: {_login_hint(repo_id)}. ({e})")
    if isinstance(e, HfHubHTTPError) and getattr(getattr(e, "response", None), "status_code", None) in (401, 403):
        return DownloadError(f"{repo_id}: HTTP {e.response.status_code}, the request was not authorised. "
                             f"To fix: {_login_hint(repo_id)}.")
    if isinstance(e, EntryNotFoundError):
        return DownloadError(f"{repo_id}: a required file is missing from the repository ({e}).")
    return None


def download(model_type: str, checkpoint_dir: str, *, token: str | None = None,
             cache_dir: str | None = None) -> Path:
    """One model type into its folder; returns the folder. Raises DownloadError with the fix on access problems;
    any other error propagates."""
    repos, folder, required, optional = MODELS[model_type]
    out = Path(checkpoint_dir) / folder
    need = [n for n in required if not (out / n).is_file()]
    if not need:  # complete: no network at all (optional files are fetched together with the required ones)
        for n in [*required, *optional]:
            print(f"[{model_type}] {out / n}: " + ("exists" if (out / n).is_file() else "absent (optional)"))
        return out
    want = [n for n in optional if not (out / n).is_file()]
    errors: list[tuple[str, Exception]] = []
    for repo_id in repos:
        try:
            got = fetch(repo_id, need, want, str(out), token=token, cache_dir=cache_dir)
        except GatedRepoError as e:  # a RepositoryNotFoundError too, but the repo exists: no fallback
            raise DownloadError(f"[{model_type}] {_access_error(repo_id, e)}") from e
        except (RepositoryNotFoundError, EntryNotFoundError) as e:
            errors.append((repo_id, e))
            if len(errors) < len(repos):
                print(f"[{model_type}] {', '.join(need)}: not available from {repo_id} ({type(e).__name__}); "
                      "trying its pre-rename id")
            continue
        except HfHubHTTPError as e:
            err = _access_error(repo_id, e)
            if err is None:
                raise
            raise DownloadError(f"[{model_type}] {err}") from e
        for n in [*required, *optional]:
            print(f"[{model_type}] {out / n}: " + (f"from {repo_id} ({got[n]})" if n in got else
                                                     "exists" if (out / n).is_file() else
                                                     f"not in {repo_id} (or not reachable); skipped (optional)"))
        return out
    if len(errors) == 1:
        raise DownloadError(f"[{model_type}] {', '.join(need)}: {_access_error(*errors[0])}") from errors[0][1]
    ids = " nor ".join(r for r, _ in errors)
    kinds = ", ".join(f"{r}: {type(e).__name__}" for r, e in errors)
    offline = any(isinstance(e, LocalEntryNotFoundError) for _, e in errors)
    why = (f"{'HF_HUB_OFFLINE is set' if _offline() else 'the Hub could not be reached'} and neither is in the local "
           "Hugging Face cache; go online (unset HF_HUB_OFFLINE) and retry. ") if offline else ""
    raise DownloadError(f"[{model_type}] {', '.join(need)}: not available from {ids} ({kinds}). {why}If the repo is "
                        f"gated or private: {_login_hint(repos[0])}.") from errors[-1][1]


# ----------------------------------------------------------------------------------------------------- convert


def mem_available_bytes(path: str = "/proc/meminfo") -> int | None:
    """MemAvailable from /proc/meminfo, or None where it cannot be read (not Linux)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def disk_free_bytes(path: str) -> int:
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def ram_needed_bytes(pt_bytes: int, num_blocks: int) -> int:
    """The converter holds one transformer block plus the largest tensor (itself within a block) at a time: about
    2 x file/num_blocks, plus JAX/Orbax overhead; at least 2 GiB (a 7B bf16 .pt: ~14 GB / 28 blocks)."""
    return max(2 * GiB, 2 * pt_bytes // max(num_blocks, 1) + GiB // 2)


def config_for(variant: str):
    """The experiment whose network the .pt must match (tests substitute a tiny one)."""
    return waymo.get_config(variant)


def convert(variant: str, checkpoint_dir: str) -> None:
    load_path = Path(waymo.VARIANTS[variant]["load_path"])
    src = Path(checkpoint_dir) / DIT_FOLDER / f"{variant}_model.pt"
    dst = Path(checkpoint_dir) / DIT_FOLDER / load_path.name
    if artifact.DIT.marked(str(dst)):
        print(f"[convert] {dst}: exists")
        return
    if not src.is_file():
        raise DownloadError(f"[convert] {src} is missing: download it first (--model_types {variant}).")
    config = config_for(variant)
    size = src.stat().st_size
    need_ram, have_ram = ram_needed_bytes(size, int(config.model.num_blocks)), mem_available_bytes()
    redo = f"python -m converters.dit_to_orbax --config=configs/waymo.py:{variant} --src {src} --dst {dst}"
    if have_ram is None:
        print("[convert] MemAvailable unreadable (/proc/meminfo); not checking memory")
    elif have_ram < need_ram:
        raise DownloadError(f"[convert] not enough memory to convert {src.name}: needs about {need_ram / GiB:.1f} GiB "
                            f"(one transformer block plus the largest tensor), MemAvailable is {have_ram / GiB:.2f} "
                            f"GiB. Free memory and rerun with --convert, or convert later elsewhere: {redo}")
    need_disk, have_disk = int(size * 1.05) + 64 * 2**20, disk_free_bytes(str(dst))
    if have_disk < need_disk:
        raise DownloadError(f"[convert] not enough disk to convert {src.name}: needs about {need_disk / GiB:.1f} GiB "
                            f"(about the .pt size) under {dst}, {have_disk / GiB:.2f} GiB free. Free space and rerun "
                            f"with --convert, or: {redo}")
    from cosmos_jax.weights import dit, keymap
    from cosmos_jax.weights.pt import PtFormatError

    print(f"[convert] {src} -> {dst} ...", flush=True)
    try:
        summary = dit.convert(str(src), str(dst), config)
    except (keymap.StrictLoadError, PtFormatError) as e:
        raise DownloadError(f"[convert] {src}: {e}") from e
    print("[convert] " + " ".join(f"{k}={v}" for k, v in summary.items()))
    if Path(checkpoint_dir).resolve() / DIT_FOLDER / load_path.name != load_path.resolve():
        print(f"[convert] note: configs/waymo.py:{variant} loads {load_path}; pass "
              f"--config.checkpoint.load_path={dst}")


# -------------------------------------------------------------------------------------------------------- main


def _types(s: str) -> list[str]:
    out = [t.strip() for t in s.split(",") if t.strip()]
    bad = [t for t in out if t not in MODELS]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"unknown model type(s) {bad}; choose from {','.join(MODELS)}")
    return list(dict.fromkeys(out))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint_dir", default="checkpoints", help="where the model folders go (default %(default)s)")
    p.add_argument("--model_types", type=_types, default=list(MODELS),
                   help=f"comma-separated subset of {','.join(MODELS)} (default: all)")
    p.add_argument("--convert", action="store_true",
                   help="after downloading t2w/v2w, convert them to the Orbax folders the configs load")
    p.add_argument("--token", default=None, help="Hugging Face token (default: HF_TOKEN or the stored login)")
    p.add_argument("--cache_dir", default=None,
                   help="Hugging Face cache to reuse files from (default: HF_HUB_CACHE / ~/.cache/huggingface/hub)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Every selected type is attempted (one repo's access problem does not stop the others); conversion runs for
    the DiT files that are present. Returns 1 if anything failed, after printing what to do for each failure."""
    args = parse_args(argv)
    failed: list[DownloadError] = []
    done = []
    for t in args.model_types:
        try:
            download(t, args.checkpoint_dir, token=args.token, cache_dir=args.cache_dir)
            done.append(t)
        except DownloadError as e:
            failed.append(e)
    if args.convert:
        if not set(args.model_types) & set(DIT_TYPES):
            print("[convert] nothing to convert: --model_types has neither t2w nor v2w")
        for t in (t for t in done if t in DIT_TYPES):
            try:
                convert(t, args.checkpoint_dir)
            except DownloadError as e:
                failed.append(e)
    for e in failed:
        print(f"error: {e}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
