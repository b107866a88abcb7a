"""A record set's ``manifest.json``: its one typed reader (the builder writes it through
:meth:`Manifest.to_json`).

    >>> m = Manifest.read("runs/demo/records")  # doctest: +SKIP
    >>> m.image_size, m.n_images, m.shard_paths("images")[:1]  # doctest: +SKIP
    (512, 400, ['runs/demo/records/images-00000-of-00020.tfrec'])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from hpa_tf import fs

FILE = "manifest.json"
KINDS = ("images", "cells")


@dataclass(frozen=True)
class Shard:
    """One shard file: its name in the record folder, examples, bytes and sha256."""

    file: str
    examples: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What a record set holds (counts, sizes, folds, shards) and how it was built (``config``)."""

    folder: str
    schema_version: int
    config: dict  # the builder's settings: sources, segmenter, image_size, cell_size, shard_mb, compression, seed
    counts: dict  # images, cells, errors, shards
    folds: dict  # n_folds, seed, images_per_fold {"0": n, ...}, file
    shards: dict[str, list[Shard]]
    sources: dict = field(default_factory=dict)  # name -> {images, images_per_fold}
    class_frequencies: dict = field(default_factory=dict)
    errors_file: str = "errors.csv"

    @classmethod
    def read(cls, records: str) -> Manifest:
        """The manifest of ``records``; a FileNotFoundError naming it and the build command when
        there is none, a ValueError when it cannot be read."""
        path = fs.join(records, FILE)
        if not fs.exists(path):
            raise FileNotFoundError(f"{path} not found: build records first with `python -m tfrecord_builder build ...`")
        try:
            raw = json.loads(fs.read_text(path))
            shards = {kind: [Shard(**s) for s in raw["shards"][kind]] for kind in KINDS}
            return cls(records, int(raw["schema_version"]), raw["config"], raw["counts"], raw["folds"], shards,
                       raw.get("sources", {}), raw.get("class_frequencies", {}), raw.get("errors_file", "errors.csv"))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} cannot be read ({type(err).__name__}: {err}); rebuild the records") from err

    def to_json(self) -> str:
        shards = {kind: [vars(s) for s in entries] for kind, entries in self.shards.items()}
        return json.dumps({"schema_version": self.schema_version, "config": self.config, "counts": self.counts,
                           "sources": self.sources, "class_frequencies": self.class_frequencies, "folds": self.folds,
                           "shards": shards, "errors_file": self.errors_file}, indent=2)

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def cell_size(self) -> int:
        return int(self.config["cell_size"])

    @property
    def compression(self) -> str:
        return str(self.config["compression"])

    @property
    def segmenter(self) -> str:
        return str(self.config["segmenter"])

    @property
    def bit_depth(self) -> int:
        """Of the stored pixels: 8, or 16 for a ``--bit-depth 16`` build."""
        return int(self.config.get("bit_depth", 8))

    @property
    def n_images(self) -> int:
        return int(self.counts["images"])

    @property
    def n_cells(self) -> int:
        return int(self.counts["cells"])

    @property
    def n_shards(self) -> int:
        return len(self.shards["images"])

    def shard_paths(self, kind: str) -> list[str]:
        """The paths of the ``kind`` ("images" or "cells") shards, in order."""
        return [fs.join(self.folder, s.file) for s in self.shards[kind]]
