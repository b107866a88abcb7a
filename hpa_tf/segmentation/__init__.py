"""Cell segmentation: nuclei and cell instance masks for 4-channel HPA images.

Backends by name: ``classical`` (built in, default), ``hpacellseg:nuclei=PATH,cell=PATH`` (the
official models, in Keras; PyTorch with ``backend=torch``), ``precomputed:DIR`` (masks saved earlier).

>>> import numpy as np
>>> seg = get_segmenter("classical")
>>> seg.segment([np.zeros((64, 64, 4), np.uint8)])[0].n_cells
0
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from hpa_tf.segmentation.base import (
    Segmentation,
    Segmenter,
    border_cells,
    empty_segmentation,
)
from hpa_tf.segmentation.classical import ClassicalConfig, ClassicalSegmenter
from hpa_tf.segmentation.hpacellseg import HPACellSegSegmenter, parse_spec
from hpa_tf.segmentation.precomputed import (
    PrecomputedSegmenter,
    read_masks,
    write_masks,
)

BACKENDS = ("classical", "hpacellseg:nuclei=PATH,cell=PATH", "precomputed:DIR")


def get_segmenter(spec: str, **options: Any) -> Segmenter:
    """A segmenter from its name: ``classical``, ``hpacellseg`` or ``precomputed:DIR``.

    ``options`` go to the backend (``ClassicalConfig`` fields for ``classical``; ``nuclei_model``,
    ``cell_model``, ``device``... for ``hpacellseg``).
    """
    if spec == "classical":
        return ClassicalSegmenter(ClassicalConfig(**_known(options, ClassicalConfig, spec)))
    if spec == "hpacellseg" or spec.startswith("hpacellseg:"):
        return HPACellSegSegmenter(**{**parse_spec(spec), **_known(options, HPACellSegSegmenter, spec)})
    if spec.startswith("precomputed:") and len(spec) > len("precomputed:"):
        return PrecomputedSegmenter(spec.split(":", 1)[1])
    raise ValueError(f"unknown segmenter {spec!r}; choose one of {', '.join(BACKENDS)}")


def _known(options: dict, cls: type, spec: str) -> dict:
    fields = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_") and f.name != "name"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"segmenter {spec!r} has no option {', '.join(unknown)}; its options: {', '.join(sorted(fields))}")
    return options


def check_segmenter(spec: str, **options: Any) -> None:
    """Raise a ValueError naming the problem if ``spec`` (and ``options``) cannot segment: an unknown
    name or option, a ``precomputed:`` folder that does not exist. Commands call it before any work."""
    segmenter = get_segmenter(spec, **options)
    if isinstance(segmenter, HPACellSegSegmenter):
        from hpa_tf import fs
        from hpa_tf.segmentation.hpacellseg import _torch

        if segmenter.backend == "torch":
            _torch()
        else:
            from hpa_tf.segmentation.official.runtime import tf_device

            tf_device(segmenter.device)
        for key, path in (("nuclei", segmenter.nuclei_model), ("cell", segmenter.cell_model)):
            if not fs.exists(path):
                raise FileNotFoundError(f"segmenter {spec}: model file {path} not found (nothing is downloaded)")
            if segmenter.backend == "keras":  # read now (cached for the run): a bad file stops it before any image
                from hpa_tf.segmentation.official.runtime import compiled_network

                try:
                    compiled_network(path, segmenter.device, segmenter.xla)
                except (ValueError, OSError, KeyError) as err:
                    raise ValueError(f"segmenter {key}={path}: {err}") from err
    if spec.startswith("precomputed:"):
        from hpa_tf import fs

        folder = spec.split(":", 1)[1]
        if not fs.exists(folder):
            raise ValueError(f"segmenter {spec}: no such folder {folder} (masks from `python -m hpa_tf.segmentation`)")


def runs_on_accelerator(spec: str) -> bool:
    """Whether a segmenter holds models that one process should own (and batch): ``hpacellseg``.
    The builder and ``predict.py`` then segment every image in one pass first, then read the masks."""
    return spec == "hpacellseg" or spec.startswith("hpacellseg:")


@functools.cache
def cell_segmenter(spec: str) -> Segmenter:
    """The segmenter of a spec, built once per process, for callers that need cell masks only
    (``precomputed:DIR`` then skips reading the nuclei masks): the builder and prediction."""
    if spec.startswith("precomputed:") and len(spec) > len("precomputed:"):
        return PrecomputedSegmenter(spec.split(":", 1)[1], with_nuclei=False)
    return get_segmenter(spec)


__all__ = [
    "BACKENDS", "ClassicalConfig", "check_segmenter", "runs_on_accelerator", "ClassicalSegmenter", "HPACellSegSegmenter", "PrecomputedSegmenter",
    "Segmentation", "Segmenter", "border_cells", "cell_segmenter", "empty_segmentation", "get_segmenter", "read_masks",
    "write_masks",
]
