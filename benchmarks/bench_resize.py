"""The resize from the records' size to a model's: TensorFlow's antialiased ``tf.image.resize``
(the host-side tf.data pipelines) against the XLA-safe matrix products of
``hpa_tf.data.contract.resize_matrix`` (the predictor's calls), eager-traced and XLA-compiled, on
a batch of uint8 images; and their largest difference."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from benchmarks.common import best_of
from hpa_tf.data.contract import to_model_size

CASES = {"image_512_to_384": ((16, 512, 512, 4), 384), "cells_128_to_96": ((128, 128, 128, 4), 96)}


def run(quick: bool = False) -> dict:
    out = {}
    for name, (shape, size) in CASES.items():
        if quick:
            shape = (max(shape[0] // 8, 1), *shape[1:])
        x = tf.constant(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
        calls = {"tf_image_resize": tf.function(lambda x, s=size: to_model_size(x, s, compilable=False)),
                 "matrix": tf.function(lambda x, s=size: to_model_size(x, s)),
                 "matrix_xla": tf.function(lambda x, s=size: to_model_size(x, s), jit_compile=True)}
        seconds = {}
        for key, fn in calls.items():
            fn(x)  # trace and compile outside the timing
            seconds[key] = best_of(lambda fn=fn: fn(x).numpy())
        diff = float(tf.reduce_max(tf.abs(calls["matrix"](x) - calls["tf_image_resize"](x))))
        out[name] = {**{f"{k}_ms": 1000 * v for k, v in seconds.items()},
                     "matrix_over_tf_image_resize": seconds["matrix"] / seconds["tf_image_resize"], "max_diff": diff}
    return out
