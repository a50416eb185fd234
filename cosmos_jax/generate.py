"""`python -m cosmos_jax.generate --checkpoint JOB_DIR|ORBAX_DIR|X.pt --view_condition_video front.mp4 --out DIR`

Generate the other cameras from a front-camera video with a post-trained network (upstream's view extension):

    [--prompt "..." --prompt_left ... --prompt_right ... --prompt_back ... --prompt_back_left ...]
    [--prompt_back_right ...]
    [--initial_condition_video DIR --num_input_frames 0|1|9]   Video2World: also pin the first frames of every view
    [--n_views 6] [--rig upstream|training] [--num_steps 35 --guidance 7 --seed 1] [--fps F] [--weights ema|reg]
    [--t5 DIR | --prompt_pickles a.pkl,b.pkl,...] [--config CONFIG for a .pt or converted weights]
    [--context N]   split the tokens over N GPUs (6 views of the 7B: 110,592 tokens)

fps: the network sees the condition video's fps by default (10 for Waymo, as in training); upstream's inference
default of 24 differs from its training and is available as `--fps 24`. Pixels are normalised as in training
(`x/127.5 - 1`, antialiased bilinear resize), not as upstream's inference (`x/128 - 1`, bicubic). Missing prompts
default to the view's prefix sentence (what training shows every non-front view). Writes one mp4 per view, the
grid (2x3 in upstream's arrangement [1, 0, 2, 4, 3, 5] for 6 views), a contact sheet, prompts.txt and settings.json.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

from cosmos_jax import inference, sharding
from cosmos_jax.data import pickles
from cosmos_jax.data import video as video_io
from cosmos_jax.rig import Rig
from cosmos_jax.weights import dit
from cosmos_jax.weights import tokenizer as tok

T5_CONVERTED = "checkpoints/google-t5/t5-11b_orbax"  # python -m converters.t5_to_orbax --dst
PROMPT_FLAGS = ("prompt", "prompt_left", "prompt_right", "prompt_back", "prompt_back_left", "prompt_back_right")


def define_flags() -> None:
    flags.DEFINE_string("checkpoint", None, "job directory, its orbax/ folder, converted weights or a .pt",
                        required=True)
    flags.DEFINE_string("view_condition_video", None, "front-camera video (mp4)", required=True)
    flags.DEFINE_string("out", None, "output folder", required=True)
    for name in PROMPT_FLAGS:
        flags.DEFINE_string(name, None, f"text for view {name.removeprefix('prompt').strip('_') or 'front'}")
    flags.DEFINE_string("initial_condition_video", None, "Video2World: folder of <view>.mp4 (or <index>.mp4)")
    flags.DEFINE_enum("num_input_frames", "0", ["0", "1", "9"], "initial frames per view (Video2World)")
    flags.DEFINE_integer("view_cond_start_frame", 0, "first frame of the condition video")
    flags.DEFINE_integer("n_views", 6, "views to generate, the front included")
    flags.DEFINE_enum("rig", "upstream", ["upstream", "training"],
                      "upstream: views front, left, right, back, back-left, back-right (rows 0-5); training: the "
                      "training cameras with their view-embedding rows")
    flags.DEFINE_integer("num_steps", 35, "sampler steps")
    flags.DEFINE_float("guidance", 7.0, "classifier-free guidance g in F = F_c + g (F_c - F_u) (upstream)")
    flags.DEFINE_integer("seed", 1, "random seed")
    flags.DEFINE_float("fps", None, "fps given to the network (default: the condition video's)")
    flags.DEFINE_enum("weights", "ema", ["ema", "reg"], "which weights of a training job")
    flags.DEFINE_string("t5", None, "text encoder folder (default: <dataset>/t5 if present, else the converted "
                        f"{T5_CONVERTED})")
    flags.DEFINE_integer("context", 1, "split each sample's tokens over this many GPUs (Ulysses attention; must divide "
                         "the heads): 6 views of the 7B on several GPUs")
    flags.DEFINE_string("prompt_pickles", None, "comma-separated T5 pickles, one per view (instead of --t5)")
    config_flags.DEFINE_config_file("config", None, "config of a .pt / converted checkpoint's network")


def read_initial(folder: str, rig: Rig, n: int, size) -> np.ndarray:
    """The last n frames of each view's initial video, [V, n, H, W, 3]."""
    out = []
    for i, name in enumerate(rig.names):
        cands = [os.path.join(folder, f"{c}.mp4") for c in (name, f"pinhole_{name}", str(i))]
        path = next((c for c in cands if os.path.isfile(c)), None)
        if path is None:
            raise FileNotFoundError(f"{folder}: no initial video for view {name} (looked for {cands})")
        total = video_io.probe(path).num_frames
        if total < n:
            raise ValueError(f"{path}: {total} frames, --num_input_frames={n} needs at least {n}")
        out.append(video_io.read_frames(path, range(total - n, total), size))
    return np.stack(out)


def text_embeddings(f, config, rig: Rig) -> tuple[np.ndarray, list[str]]:
    s = int(config.data.text_tokens)
    width = int(config.model.crossattn_emb_channels)
    # Prompt flags follow upstream's view slots (view-embedding rows): Waymo side_left is slot 4 (back-left).
    given = [getattr(f, PROMPT_FLAGS[r]) if r < len(PROMPT_FLAGS) else None for r in rig.rows]
    prompts = [g or rig.default_prompt(i) for i, g in enumerate(given)]
    if f.prompt_pickles:
        paths = f.prompt_pickles.split(",")
        if len(paths) != len(rig.names):
            raise ValueError(f"--prompt_pickles: {len(paths)} files for {len(rig.names)} views")
        embs = [pickles.read_embedding(p, width) for p in paths]
    else:
        from cosmos_jax.weights import t5 as t5_weights

        t5 = f.t5 or next((d for d in (os.path.join(config.data.dataset_dir, "t5"), T5_CONVERTED,
                                       "checkpoints/google-t5/t5-11b") if os.path.isdir(d)), None)
        if t5 is None:
            raise FileNotFoundError("no text encoder: pass --t5 DIR or --prompt_pickles")
        enc = t5_weights.load_encoder(t5)  # a converted T5 (converters.t5_to_orbax) or a synthetic dataset's tiny T5
        embs = enc.embed(prompts)
        if embs[0].shape[1] != width:
            raise ValueError(f"{t5}: embeddings of width {embs[0].shape[1]}, the network expects {width}")
    return np.stack([pickles.pad_tokens(e, s)[0] for e in embs]), prompts


def run(f) -> dict:
    t0 = time.time()
    loaded = dit.load(f.checkpoint, f.weights, f.config)
    loaded, mesh = inference.on_context_mesh(loaded, f.context)
    config = loaded.config
    rig = Rig.upstream(f.n_views) if f.rig == "upstream" else Rig.training(config, f.n_views)
    size = tuple(config.data.video_size)
    n = int(config.data.num_frames)
    info = video_io.probe(f.view_condition_video)
    start = f.view_cond_start_frame
    if info.num_frames < start + n:
        raise ValueError(f"{f.view_condition_video}: {info.num_frames} frames, needs {start + n} "
                         f"(--view_cond_start_frame {start} + {n} frames)")
    front = video_io.read_frames(f.view_condition_video, range(start, start + n), size)
    fps = f.fps or info.fps
    num_input = int(f.num_input_frames)
    initial = read_initial(f.initial_condition_video, rig, num_input, size) \
        if f.initial_condition_video and num_input else None
    text, prompts = text_embeddings(f, config, rig)
    tokenizer = tok.from_config(config)
    bar = tqdm(total=f.num_steps, desc="sampling")
    with sharding.activate(mesh):
        gen, _ = inference.view_extend(loaded, tokenizer, front, text, rig, fps, jax.random.key(f.seed),
                                       f.num_steps, f.guidance, initial, {0: 0, 1: 1, 9: 2}[num_input],
                                       callback=lambda i, total: bar.update(1))
    bar.close()
    os.makedirs(f.out, exist_ok=True)
    for i, name in enumerate(rig.names):
        video_io.write_mp4(os.path.join(f.out, f"{name}.mp4"), gen[i], fps=info.fps)
    grid_path, sheet_path = write_grid(f.out, gen, rig, info.fps)
    with open(os.path.join(f.out, "prompts.txt"), "w") as fh:
        fh.write("".join(f"{name}: {p}\n" for name, p in zip(rig.names, prompts, strict=True)))
    settings = {"checkpoint": loaded.source, "views": list(rig.names), "view_rows": list(rig.rows),
                "frame_repeat": list(rig.repeat), "fps_to_network": fps, "condition_video": f.view_condition_video,
                "start_frame": start, "frames": n, "size": list(size), "num_steps": f.num_steps,
                "guidance": f.guidance, "seed": f.seed, "num_input_frames": num_input, "weights": f.weights,
                "seconds": round(time.time() - t0, 1), "grid": grid_path, "sheet": sheet_path}
    with open(os.path.join(f.out, "settings.json"), "w") as fh:
        json.dump(settings, fh, indent=2)
    return settings


def write_grid(out: str, gen_VFHW3: np.ndarray, rig: Rig, fps: float) -> tuple[str, str]:
    from PIL import Image

    from cosmos_jax.samples import label, write_grid_mp4

    order = rig.grid_order()
    cols = 3 if len(order) >= 3 else len(order)
    blank = np.zeros_like(np.stack([label(fr, "") for fr in gen_VFHW3[0]]))
    tiles = [blank if i is None else np.stack([label(fr, rig.names[i]) for fr in gen_VFHW3[i]]) for i in order]
    while len(tiles) % cols:
        tiles.append(blank)
    grid_path = os.path.join(out, "grid.mp4")
    grid = write_grid_mp4(grid_path, [tiles[r:r + cols] for r in range(0, len(tiles), cols)], fps)
    f = grid.shape[0]
    sheet = np.concatenate([grid[t] for t in sorted({0, f // 2, f - 1})], axis=0)
    sheet_path = os.path.join(out, "sheet.png")
    Image.fromarray(sheet).save(sheet_path)
    return grid_path, sheet_path


def main(argv):
    del argv
    # JAX's GPU allocator takes 75 % of the card by default; the 7B steps need more (set before first use).
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    try:
        settings = run(flags.FLAGS)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    from cosmos_jax.utils import memory

    settings["peak_device_memory_gb"] = memory.peak_device_gb()
    print(json.dumps(settings, indent=2))


if __name__ == "__main__":
    define_flags()
    app.run(main)
