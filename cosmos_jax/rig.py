"""The camera rig, in one place: the training cameras (view keys, view-embedding rows, prefix sentences), upstream's
6-view inference rig (names, rows, frame repeat, the 2x3 grid order) and `Rig`, the views one generation uses.

Training (docs/upstream.md §2, §4; docs/data-layout.md §1): five Waymo cameras in VIEW_KEYS order; view i uses row
CAPTION_VIEW_IDX_MAP[i] of the network's 7-row view-embedding table; each view's text starts with its prefix
sentence. Inference (docs/upstream.md §8): views 0..5 (front, front-left, front-right, back, back-left, back-right)
use rows 0..5 and frame repeat [0, 0, 0, 0, 10, 10] / 10; the grid shows them as [1, 0, 2 / 4, 3, 5].
"""

from __future__ import annotations

import dataclasses

# The training cameras, in the dataset's and the config's order (configs/base.py data.view_keys).
VIEW_KEYS = ("pinhole_front", "pinhole_front_left", "pinhole_front_right", "pinhole_side_left", "pinhole_side_right")
# View index in VIEW_KEYS -> row of the network's 7-row view-embedding table (upstream caption_view_idx_map).
CAPTION_VIEW_IDX_MAP = {0: 0, 1: 1, 2: 2, 3: 4, 4: 5}

# The per-view prefix sentences of the NVIDIA toolkit scripts and upstream's get_t5_embeddings_from_waymo.py.
_CAPTURED = "The video is captured from a camera mounted on a car."
PREFIX_SENTENCES = {
    "pinhole_front": f"{_CAPTURED} The camera is facing forward.",
    "pinhole_front_left": f"{_CAPTURED} The camera is facing forward and slightly to the left.",
    "pinhole_front_right": f"{_CAPTURED} The camera is facing forward and slightly to the right.",
    "pinhole_side_left": f"{_CAPTURED} The camera is facing to the left.",
    "pinhole_side_right": f"{_CAPTURED} The camera is facing to the right.",
}

# Upstream's 6-view inference rig: names, frame repeat, the 2x3 grid order, prompts' prefixes.
SIX_VIEWS = ("front", "front_left", "front_right", "back", "back_left", "back_right")
SIX_REPEAT = (0.0, 0.0, 0.0, 0.0, 10.0, 10.0)
SIX_GRID = (1, 0, 2, 4, 3, 5)
SIX_PREFIX = {
    "front": PREFIX_SENTENCES["pinhole_front"],
    "front_left": PREFIX_SENTENCES["pinhole_front_left"],
    "front_right": PREFIX_SENTENCES["pinhole_front_right"],
    "back": f"{_CAPTURED} The camera is facing backward.",
    "back_left": PREFIX_SENTENCES["pinhole_side_left"],
    "back_right": PREFIX_SENTENCES["pinhole_side_right"],
}


@dataclasses.dataclass(frozen=True)
class Rig:
    """The views to generate: names, view-embedding rows, frame repeat (raw, divided by 10 for the network)."""

    names: tuple[str, ...]
    rows: tuple[int, ...]
    repeat: tuple[float, ...]

    @classmethod
    def upstream(cls, n_views: int) -> Rig:
        if not 1 <= n_views <= 6:
            raise ValueError(f"--n_views={n_views}: upstream's inference rig has 1..6 views")
        return cls(SIX_VIEWS[:n_views], tuple(range(n_views)), SIX_REPEAT[:n_views])

    @classmethod
    def training(cls, config, n_views: int) -> Rig:
        """The first n training cameras with the training's view-embedding rows (caption_view_idx_map)."""
        keys = list(config.data.view_keys)[:n_views]
        idx = {int(k): int(v) for k, v in dict(config.data.caption_view_idx_map).items()}
        return cls(tuple(k.removeprefix("pinhole_") for k in keys), tuple(idx.get(i, i) for i in range(len(keys))),
                   (0.0,) * len(keys))

    def grid_order(self) -> list[int | None]:
        """Tiles of the 3-wide grid (None = blank): upstream's [1, 0, 2 / 4, 3, 5] for 6 views; with 5 views the
        side cameras go under the front-left and front-right ones."""
        n = len(self.names)
        if self.names == SIX_VIEWS:
            return list(SIX_GRID)
        if n == 5:
            return [1, 0, 2, 3, None, 4]
        return [1, 0, 2, *range(3, n)] if n >= 3 else list(range(n))

    def default_prompt(self, i: int) -> str:
        return SIX_PREFIX.get(self.names[i]) or PREFIX_SENTENCES.get("pinhole_" + self.names[i], "")
