"""The official networks in a TF program: one copy per process and device, called on batches under
XLA (``jit_compile``; one compilation per input shape, so keep batches the same size)."""

from __future__ import annotations

import contextlib
import functools
import re
from dataclasses import dataclass
from typing import Any

import numpy as np


def tf_device(device: str) -> str | None:
    """A TF device name from the segmenter's ``device`` option: ``auto`` -> None (TF's placement),
    ``cpu`` -> ``/CPU:0``, ``cuda``/``gpu`` -> ``/GPU:0``, ``cuda:1``/``gpu:1`` -> ``/GPU:1``, ``tpu:0``...

    >>> [tf_device(d) for d in ("auto", "cpu", "cuda:1", "gpu")]
    [None, '/CPU:0', '/GPU:1', '/GPU:0']
    """
    if device == "auto":
        return None
    m = re.fullmatch(r"(cpu|cuda|gpu|tpu)(?::(\d+))?", device.lower())
    if m is None:
        raise ValueError(f"device {device!r}: use auto, cpu, cuda[:N], gpu[:N] or tpu[:N]")
    kind = {"cpu": "CPU", "cuda": "GPU", "gpu": "GPU", "tpu": "TPU"}[m.group(1)]
    return f"/{kind}:{m.group(2) or 0}"


@dataclass
class CompiledNetwork:
    """A loaded network and its compiled call: ``net(batch)`` with (B, H, W, 3) float32 normalised
    input -> (B, H, W, 3) float32 softmax, numpy in and out."""

    model: Any
    device: str | None
    jit: bool

    def __post_init__(self) -> None:
        import tensorflow as tf

        self._fn = tf.function(lambda x: self.model(x, training=False), jit_compile=self.jit, reduce_retracing=True)

    def _scope(self) -> Any:
        import tensorflow as tf

        return tf.device(self.device) if self.device else contextlib.nullcontext()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._scope():
            return np.asarray(self._fn(np.ascontiguousarray(batch, np.float32)))


@functools.cache
def compiled_network(path: str, device: str = "auto", jit: bool = True) -> CompiledNetwork:
    """The network of ``path`` (:func:`hpa_tf.segmentation.official.load_network`), loaded once per
    process for each (path, device, jit)."""
    import tensorflow as tf

    from hpa_tf.segmentation.official.convert import load_network

    name = tf_device(device)
    with tf.device(name) if name else contextlib.nullcontext():
        model = load_network(path)
    return CompiledNetwork(model, name, jit)
