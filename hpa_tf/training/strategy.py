"""One function from a strategy name to a ``tf.distribute`` strategy, and the matching precision.

``auto``: a TPU when the machine has one (Kaggle/Colab TPU VM, or ``TPU_NAME``), else
multi-worker mirrored when ``TF_CONFIG`` lists several workers, else mirrored over all GPUs when
there are several, else the default (one device). ``cpu_mirrored`` mirrors over logical CPU
devices (``train.logical_cpus``): the real distributed code path on a laptop.
"""

from __future__ import annotations

import glob
import json
import os

import tensorflow as tf


def configure_logical_cpus(n: int) -> None:
    """Split the CPU into ``n`` logical devices (must run before TensorFlow uses any device)."""
    if n <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as err:
        raise RuntimeError(f"train.logical_cpus={n} must be set before TensorFlow starts ({err})") from err


def _has_tpu() -> bool:
    env = ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID")
    return any(os.environ.get(k) for k in env) or bool(glob.glob("/dev/accel*")) or bool(glob.glob("/dev/vfio/[0-9]*"))


def _tpu_strategy() -> tf.distribute.Strategy:
    tpu = os.environ.get("TPU_NAME") or ("" if os.environ.get("COLAB_TPU_ADDR") else "local")
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    if tpu != "local":
        tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def get_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """``get_strategy("auto")`` -> TPUStrategy / MultiWorkerMirroredStrategy / MirroredStrategy / default."""
    if name == "auto":
        workers = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {}).get("worker", [])
        if _has_tpu():
            return _tpu_strategy()
        if len(workers) > 1:
            return tf.distribute.MultiWorkerMirroredStrategy()
        if len(tf.config.list_physical_devices("GPU")) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    if name == "tpu":
        return _tpu_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if name == "cpu_mirrored":
        return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    raise ValueError(f"unknown strategy {name!r}: auto | tpu | mirrored | multi_worker | cpu | cpu_mirrored")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: the only one, or the chief (worker 0 when the
    cluster has no chief) of a multi-worker run."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None) if resolver is not None else None
    if not task_type or task_type == "chief":
        return True
    if task_type == "worker" and not isinstance(strategy, tf.distribute.TPUStrategy):
        return resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()
    return isinstance(strategy, tf.distribute.TPUStrategy)


def precision_policy(setting: str, strategy: tf.distribute.Strategy) -> str:
    """The Keras dtype policy: bfloat16 on TPU, float16 on GPU, float32 on CPU (``auto``)."""
    if setting == "off":
        return "float32"
    if setting in ("bfloat16", "float16"):
        return f"mixed_{setting}"
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "mixed_bfloat16"
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"


def replica_compiled(cache: dict, fn, name: str):
    """``fn`` XLA-compiled for the replica calling it (inside ``strategy.run``), from ``cache``: one
    function traced on one device would reach the other replicas' variables across devices."""
    context = tf.distribute.get_replica_context()
    replica = tf.get_static_value(context.replica_id_in_sync_group) if context is not None else 0
    key = (name, int(replica or 0))
    if key not in cache:
        cache[key] = tf.function(fn, jit_compile=True)
    return cache[key]
