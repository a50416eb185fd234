"""The marker that says a converted folder is complete: one JSON file, written last, removed first.

Every folder of weights this package writes in several steps (the DiT's blockwise folder, the tokenizer's, the
T5 encoder's) ends with a marker file {"format": ..., ...}. `begin` removes it before anything else is written, so an
interrupted rewrite never looks complete; `finish` writes it last, to a temporary name renamed into place; `read`
refuses a folder without it (naming the folder and the command that makes one) or with another format.
"""

from __future__ import annotations

import dataclasses
import json
import os


@dataclasses.dataclass(frozen=True)
class Artifact:
    """One kind of converted folder: its format string, what it is, the command that makes it ("{folder}" stands
    for the folder) and the name of its marker file."""

    format: str
    what: str
    make: str
    marker: str = "meta.json"

    def path(self, folder: str) -> str:
        return os.path.join(folder, self.marker)

    def marked(self, folder: str) -> bool:
        """The marker is there (its format is checked by `read`)."""
        return os.path.isfile(self.path(folder))

    def refuse_overwrite(self, folder: str, overwrite: bool) -> None:
        """FileExistsError when `folder` already holds a complete conversion and `overwrite` is False."""
        if self.marked(folder) and not overwrite:
            raise FileExistsError(f"{folder}: already holds a conversion; pass --overwrite to replace it")

    def begin(self, folder: str) -> None:
        """Create `folder` and remove its marker: from now until `finish` it is not complete."""
        os.makedirs(folder, exist_ok=True)
        if os.path.exists(self.path(folder)):
            os.remove(self.path(folder))

    def finish(self, folder: str, info: dict) -> dict:
        """Write the marker {"format", **info} (temporary name, then rename); returns what was written."""
        meta = {"format": self.format, **info}
        tmp = self.path(folder) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=2)
        os.replace(tmp, self.path(folder))
        return meta

    def read(self, folder: str, setting: str | None = None) -> dict:
        """The marker's contents, checked: FileNotFoundError (with the command that makes one) when absent,
        ValueError when it is not JSON or of another format. `setting`: the config key that named the folder, for
        the message (e.g. "tokenizer.checkpoint_dir")."""
        marker = self.path(folder)
        if not os.path.isfile(marker):
            where = f"{setting}={folder}" if setting else folder
            raise FileNotFoundError(f"{where}: not a complete {self.what} (no {self.marker}); make it with "
                                    + self.make.format(folder=folder))
        with open(marker) as f:
            try:
                meta = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{marker}: not valid JSON ({e})") from e
        if not isinstance(meta, dict) or meta.get("format") != self.format:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(f"{marker}: format {found!r}, expected {self.format!r}")
        return meta


DIT = Artifact("cosmos_jax.base_weights/1", "converted DiT checkpoint",
               "python -m converters.dit_to_orbax --src <model.pt> --dst {folder}")
TOKENIZER = Artifact("cosmos_jax.cosmos_tokenizer/1", "converted tokenizer",
                     "python -m converters.tokenizer_to_orbax --src <dir with encoder.jit, decoder.jit, mean_std.pt> "
                     "--dst {folder}")
T5 = Artifact("cosmos_jax.t5/1", "converted T5 folder",
              "python -m converters.t5_to_orbax --src <google-t5/t5-11b folder> --dst {folder}", marker="config.json")
