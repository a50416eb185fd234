"""Captions and the tiny T5 text encoder of the synthetic rig dataset (used by `cosmos_jax.data.synthetic`).

`captions` describes a scene per view from the vehicles each camera sees; `build_text_encoder` trains a
SentencePiece tokenizer and writes a random tiny T5 (+ optional fixed projection) that cosmos_jax/weights/t5.py's
`load_encoder` reads back.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from cosmos_jax.data.synthetic_scene import (
    FACADE_COLOURS,
    FPS,
    TIMES_OF_DAY,
    VEHICLE_COLOURS,
    VEHICLE_KINDS,
    Camera,
    Scene,
    Vehicle,
)
from cosmos_jax.rig import PREFIX_SENTENCES, VIEW_KEYS

if TYPE_CHECKING:
    from cosmos_jax.weights.t5 import TextEncoder

# ----------------------------------------------------------------------------------------------------------------
# Captions

ROLE_FRONT = {
    "lead": "{A} {c} {k} drives ahead in the same lane.",
    "overtake": "{A} {c} {k} overtakes on the {s}.",
    "passed": "The ego car passes a slower {c} {k} on the {s}.",
    "oncoming": "{A} {c} {k} approaches in the oncoming lane.",
}
ROLE_SIDE = {
    "lead": "{A} {c} {k} drives ahead of the ego car.",
    "overtake": "{A} {c} {k} drives alongside in the {s} lane and pulls ahead.",
    "passed": "A slower {c} {k} in the {s} lane falls behind as the ego car passes it.",
    "oncoming": "{A} {c} {k} passes by in the oncoming lane.",
}
VIEW_INTRO = {
    "pinhole_front_left": "The view shows the road ahead and to the left",
    "pinhole_front_right": "The view shows the road ahead and to the right",
    "pinhole_side_left": "The view shows the left side of the street",
    "pinhole_side_right": "The view shows the right side of the street",
}
LANES_WORD = {2: "two-lane", 3: "three-lane", 4: "four-lane"}


def visible_vehicles(scene: Scene, cam: Camera) -> list[Vehicle]:
    """Vehicles whose centre projects inside the image, within 80 m, in at least 2 frames."""
    out = []
    for v in scene.vehicles:
        n = 0
        for f in range(scene.frames):
            t = f / FPS
            p = np.array([[v.x(t) - scene.ego_x(t), v.y, v.size[2] / 2]])
            u, w, depth = cam.project(p)
            n += int(0.5 < depth[0] < 80 and 0 <= u[0] < cam.width and 0 <= w[0] < cam.height)
        if n >= 2:
            out.append(v)
    return out


def captions(scene: Scene, cams: dict[str, Camera]) -> dict[str, str]:
    """{view: caption}; the front one starts with the front prefix sentence, the others carry no prefix."""
    lanes = LANES_WORD[scene.n_same + scene.n_oncoming]
    light = scene.tod.phrase
    left, right = scene.facades["left"].describe(), scene.facades["right"].describe()
    out = {}
    for view in VIEW_KEYS:
        vis = visible_vehicles(scene, cams[view])
        table = ROLE_FRONT if view == "pinhole_front" else ROLE_SIDE
        said = [table[v.role].format(A="An" if v.colour[0] in "aeiou" else "A", c=v.colour, k=v.kind, s=v.side)
                for v in vis]
        if view == "pinhole_front":
            others = len(scene.vehicles)
            count = f"{others} other vehicle{'s' if others != 1 else ''}"
            text = [PREFIX_SENTENCES[view],
                    f"The ego car drives forward along a straight {lanes} city street {light}, with {count} nearby.",
                    *said,
                    f"{left.capitalize()} line the left side and {right} line the right side of the street.",
                    "Street lights stand along both sidewalks."]
        else:
            side = "left" if view.endswith("left") else "right"
            near = scene.facades[side].describe()
            what = "the oncoming lanes" if side == "left" and scene.ego_lane == scene.n_same - 1 else \
                "the curb and the sidewalk" if side == "right" and scene.ego_lane == 0 else "the adjacent lane"
            text = [f"{VIEW_INTRO[view]} {light}, past {what}.",
                    *(said or ["No other vehicles are visible."]),
                    f"{near.capitalize()} line the {side} side of the street, with street lights on the sidewalk."]
        out[view] = " ".join(text)
    return out


# Words of the caption grammar (so the tokenizer has pieces for prompts written in the same style).
GRAMMAR_CORPUS = [
    " ".join(VEHICLE_COLOURS) + " " + " ".join(VEHICLE_KINDS) + " " + " ".join(FACADE_COLOURS),
    " ".join(t.phrase for t in TIMES_OF_DAY) + " " + " ".join(LANES_WORD.values()),
    *ROLE_FRONT.values(), *ROLE_SIDE.values(), *VIEW_INTRO.values(),
    "tall low mid-rise buildings line the left side and the right side of the street. No other vehicles are visible.",
    "The ego car drives forward along a straight city street with other vehicles nearby, past the oncoming lanes, "
    "the curb and the sidewalk, the adjacent lane. Street lights stand along both sidewalks.",
]


# ----------------------------------------------------------------------------------------------------------------
# Text encoder

def train_tokenizer(texts: Sequence[str], vocab_size: int = 400) -> bytes:
    """A T5-style SentencePiece unigram model proto (pad 0, eos 1, unk 2, no BOS)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, num_threads=1, minloglevel=2,
        character_coverage=1.0)
    return buf.getvalue()


def build_text_encoder(out_dir: str, corpus: Sequence[str], embed_dim: int, seed: int) -> TextEncoder:
    """Train the tokenizer, initialise the encoder, write `out_dir` (spiece.model, then weights.npz, proj.npy and
    config.json through cosmos_jax/weights/t5.py) and return it loaded back from there."""
    from cosmos_jax.models import t5
    from cosmos_jax.weights import t5 as t5_weights

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, t5_weights.TOKENIZER), "wb") as f:
        f.write(train_tokenizer(corpus))
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=os.path.join(out_dir, t5_weights.TOKENIZER)).get_piece_size()
    d_model = embed_dim if embed_dim <= 128 else 64
    heads = 4 if d_model % 4 == 0 else 1
    cfg = t5.T5Config(vocab_size=vocab, d_model=d_model, d_kv=max(1, d_model // heads), d_ff=2 * d_model,
                      num_layers=2, num_heads=heads, feed_forward_proj="relu")
    proj = None
    if embed_dim != d_model:
        proj = np.random.default_rng([seed, 0x9807]).standard_normal((d_model, embed_dim)) / math.sqrt(d_model)
    t5_weights.write_npz_folder(out_dir, cfg, t5_weights.random_state_dict(cfg, seed), proj, embed_dim,
                                "random tiny T5 for synthetic data (cosmos_jax.data.synthetic); not google-t5/t5-11b")
    return t5_weights.load_npz_folder(out_dir)
