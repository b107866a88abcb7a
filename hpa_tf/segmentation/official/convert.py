"""The official networks' tensors into the Keras network, and converted copies saved and loaded.

Tensor names are the torch ``state_dict``'s (a ``module.`` prefix from ``nn.DataParallel`` is
dropped); each Keras layer carries the name of its torch module. Convolutions: OIHW -> HWIO;
batch norms: weight, bias, running mean and variance (``num_batches_tracked`` is not needed).
"""

from __future__ import annotations

import json
import re

import keras
import numpy as np

from hpa_tf.segmentation.official.network import DPNUnetConfig, build_network

_BN = ("weight", "bias", "running_mean", "running_var")


def strip_prefix(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Names without the ``module.`` prefix of a network saved inside ``nn.DataParallel``."""
    if tensors and all(k.startswith("module.") for k in tensors):
        return {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def config_from_tensors(tensors: dict[str, np.ndarray], path: str = "the file") -> DPNUnetConfig:
    """The network's hyper-parameters read off its tensors' names and shapes (the official files give
    :class:`DPNUnetConfig`'s defaults). ``ValueError`` naming ``path`` when they are not a DPNUnet's."""
    try:
        stem = tensors["encoder_stages.0.0.weight"]
        k_sec, inc_sec, widths, bottlenecks = [], [], [], []
        for stage in range(1, 5):
            blocks = sorted({int(m.group(1)) for k in tensors
                             if (m := re.fullmatch(rf"encoder_stages\.{stage}\.(\d+)\.c1x1_a\.conv\.weight", k))})
            first = blocks[0]
            proj = tensors.get(f"encoder_stages.{stage}.{first}.c1x1_w_s1.conv.weight",
                               tensors.get(f"encoder_stages.{stage}.{first}.c1x1_w_s2.conv.weight"))
            out_c = tensors[f"encoder_stages.{stage}.{first}.c1x1_c.conv.weight"].shape[0]
            inc = proj.shape[0] - out_c
            k_sec.append(len(blocks))
            inc_sec.append(inc)
            widths.append(out_c - inc)
            bottlenecks.append(tensors[f"encoder_stages.{stage}.{first}.c1x1_a.conv.weight"].shape[0])
        grouped = tensors["encoder_stages.1.1.c3x3_b.conv.weight"]
        cfg = DPNUnetConfig(num_init_features=int(stem.shape[0]), k_r=int(bottlenecks[0]),
                            groups=int(grouped.shape[0] // grouped.shape[1]), k_sec=tuple(k_sec),
                            inc_sec=tuple(int(i) for i in inc_sec), widths=tuple(int(w) for w in widths),
                            classes=int(tensors["final.0.weight"].shape[0]), input_channels=int(stem.shape[1]))
    except (KeyError, IndexError, AttributeError) as err:
        raise ValueError(f"{path}: not the official DPNUnet's tensors (missing {err})") from None
    if [cfg.bottleneck(s) for s in range(4)] != bottlenecks:
        raise ValueError(f"{path}: bottleneck widths {bottlenecks} do not follow k_r * width / width0")
    return cfg


def _torch_weights(layer: keras.layers.Layer) -> list[tuple[str, tuple[int, ...]]]:
    """The torch names (without the layer's) and shapes of a layer's weights, in Keras' order."""
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw, cin, cout = layer.kernel.shape
        out = [("weight", (cout, cin, kh, kw))]
        return out + ([("bias", (cout,))] if layer.use_bias else [])
    if isinstance(layer, keras.layers.BatchNormalization):
        return [(n, tuple(layer.gamma.shape)) for n in _BN]
    return []


def state_shapes(model: keras.Model) -> dict[str, tuple[int, ...]]:
    """The torch ``state_dict`` names and shapes the Keras network stands for (``num_batches_tracked``
    included), e.g. to compare with the official files' list."""
    out = {}
    for layer in model.layers:
        for name, shape in _torch_weights(layer):
            out[f"{layer.name}.{name}"] = shape
        if isinstance(layer, keras.layers.BatchNormalization):
            out[f"{layer.name}.num_batches_tracked"] = ()
    return out


def assign_weights(model: keras.Model, tensors: dict[str, np.ndarray], path: str = "the file") -> None:
    """Set the network's weights from the torch tensors; ``ValueError`` naming ``path`` and the tensor
    on a missing, extra or mis-shaped one."""
    tensors = strip_prefix(tensors)
    used = set()
    for layer in model.layers:
        names = _torch_weights(layer)
        if not names:
            continue
        values = []
        for name, shape in names:
            key = f"{layer.name}.{name}"
            if key not in tensors:
                raise ValueError(f"{path}: tensor {key} missing (is it the official DPNUnet?)")
            value = np.asarray(tensors[key], np.float32)
            if value.shape != shape:
                raise ValueError(f"{path}: tensor {key} is {value.shape}, the network needs {shape}")
            used.add(key)
            values.append(value.transpose(2, 3, 1, 0) if value.ndim == 4 else value)
        layer.set_weights(values)
    extra = sorted(k for k in tensors if k not in used and not k.endswith("num_batches_tracked"))
    if extra:
        raise ValueError(f"{path}: {len(extra)} tensors the network has no place for, e.g. {extra[0]}")


def network_from_tensors(tensors: dict[str, np.ndarray], path: str = "the file") -> keras.Model:
    """The Keras network of a DPNUnet's torch tensors (configuration read off them)."""
    tensors = strip_prefix(tensors)
    model = build_network(config_from_tensors(tensors, path), random_init=False)
    assign_weights(model, tensors, path)
    return model


def _config_path(weights_path: str) -> str:
    return weights_path[: -len(".weights.h5")] + ".json"


def load_network(path: str) -> keras.Model:
    """The official network as a Keras model: (B, H, W, 3) float32 normalised as the official code does
    (``(x / 255 - mean) / std``, :data:`hpa_tf.segmentation.hpacellseg.MEAN`/``STD``), H and W multiples
    of 32 -> softmax over background, border, interior (B, H, W, 3).

    ``path``: an official model file (``.pth``, read as data, never run), or a converted copy:
    ``.keras``, or ``.weights.h5`` (with the ``.json`` configuration written beside it by
    :func:`save_network`; the official configuration without one). Local or ``gs://``.
    """
    from hpa_tf import fs

    if not fs.exists(path):
        raise FileNotFoundError(f"{path}: no such model file")
    if path.endswith(".keras") or path.endswith(".weights.h5"):
        return _load_converted(path)
    from hpa_tf.segmentation.official.torchfile import read_torch_file

    return network_from_tensors(read_torch_file(path).tensors, path)


def _local_copy(path: str) -> tuple[str, str | None]:
    if "://" not in path:
        return path, None
    import os
    import tempfile

    from hpa_tf import fs

    folder = tempfile.mkdtemp()
    local = os.path.join(folder, path.rsplit("/", 1)[-1])
    with open(local, "wb") as f:
        f.write(fs.read_bytes(path))
    return local, folder


def _load_converted(path: str) -> keras.Model:
    import shutil

    from hpa_tf import fs

    local, folder = _local_copy(path)
    try:
        if path.endswith(".keras"):
            return keras.saving.load_model(local, compile=False)
        config = _config_path(path)
        cfg = DPNUnetConfig.from_dict(json.loads(fs.read_text(config))) if fs.exists(config) else DPNUnetConfig()
        model = build_network(cfg, random_init=False)
        model.load_weights(local)
        return model
    finally:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)


def network_config(model: keras.Model) -> DPNUnetConfig:
    """The configuration of a network built by :func:`build_network` (read off its weights' shapes)."""
    return config_from_tensors({k: np.broadcast_to(np.float32(0), s) for k, s in state_shapes(model).items()})


def save_network(model: keras.Model, path: str) -> None:
    """Save a converted network: ``.keras`` (the model whole) or ``.weights.h5`` (weights, and the
    configuration as ``.json`` beside them). Local or ``gs://``."""
    import os
    import tempfile

    from hpa_tf import fs

    if not (path.endswith(".keras") or path.endswith(".weights.h5")):
        raise ValueError(f"{path}: a converted network is saved as .keras or .weights.h5")
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, path.rsplit("/", 1)[-1])
        if path.endswith(".keras"):
            model.save(local)
        else:
            model.save_weights(local)
            fs.write_bytes(_config_path(path), json.dumps(network_config(model).to_dict(), indent=1).encode())
        with open(local, "rb") as f:
            fs.write_bytes(path, f.read())
