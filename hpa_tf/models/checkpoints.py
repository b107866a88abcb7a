"""Loading hpa-tf models, and starting a new model from a trained one.

- :func:`load_model`: a ``.keras`` file in the compute dtype asked for. A model trained in mixed
  precision (``mixed_bfloat16`` on a TPU) stores float32 variables but bfloat16 layers; on a CPU or
  GPU it loads in float32 by default (bfloat16 is slow or unsupported there). Asked for a mixed
  policy, a model trained in float32 computes in half precision too (its output layers stay float32).
- :func:`init_from`: copy a four-channel hpa-tf checkpoint (``.keras``, or ``.weights.h5`` of a
  whole model or of its backbone) into a new model: the backbone always (it does not depend on
  the input size, so a model trained at 256 px starts one at 512 px), and the class head when both
  have one (an image model's 1x1 CAM convolution and a cell model's dense head are the same map,
  reshaped), and the GeM exponent. The image model's backbone starts a cell-bag model this way.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from typing import Any

import keras
import numpy as np

from hpa_tf import fs

_MIXED = ("mixed_bfloat16", "mixed_float16", "bfloat16", "float16")
_HEADS = ("cam", "cell_logits")


def _output_names(outputs: Any) -> set[str]:
    """The layer names in a functional config's ``output_layers`` (a [name, node, tensor] triple, or
    a list or dict of them)."""
    if isinstance(outputs, list) and len(outputs) == 3 and isinstance(outputs[0], str):
        return {outputs[0]}
    values = outputs.values() if isinstance(outputs, dict) else outputs if isinstance(outputs, list) else []
    return set().union(*(_output_names(v) for v in values))


def _set_policies(node: Any, dtype: str, keep: frozenset[str] = frozenset()) -> int:
    """Rewrite the dtype policies in a serialised model config to compute in ``dtype``; returns how
    many. To float32: every reduced-precision policy. To a mixed policy: every float32 one too (a
    model trained in float32 then computes in half precision), except the layers named in ``keep``
    (the model's outputs, float32 as in mixed-precision training)."""
    changed = 0
    if isinstance(node, dict):
        policy = node.get("dtype")
        if isinstance(policy, dict) and policy.get("class_name", "").endswith("DTypePolicy"):
            name = policy.get("config", {}).get("name")
            rewrite = name in _MIXED or (dtype in _MIXED and name == "float32" and node.get("name") not in keep)
            if rewrite and name != dtype:
                policy["config"]["name"] = dtype
                changed += 1
        changed += sum(_set_policies(v, dtype, keep) for k, v in node.items() if k != "dtype")
    elif isinstance(node, list):
        changed += sum(_set_policies(v, dtype, keep) for v in node)
    return changed


def load_model(path: str, dtype: str = "float32") -> keras.Model:
    """A saved hpa-tf model whose layers compute in ``dtype`` (``float32``, ``mixed_float16``,
    ``mixed_bfloat16``, or ``keep`` for the dtype it was trained in); outputs stay float32.

    >>> model = load_model("gs://b/models/image_b0/best.keras")  # doctest: +SKIP
    """
    import hpa_tf.models  # noqa: F401 - registers the custom layers

    if not fs.exists(path):
        raise FileNotFoundError(f"model {path} not found (a .keras file written by train_tpu.py: best.keras or last.keras)")
    try:
        data = fs.read_bytes(path)
        archive = zipfile.ZipFile(io.BytesIO(data))
        config = json.loads(archive.read("config.json"))
    except Exception as err:
        raise ValueError(f"cannot load model {path}: {type(err).__name__}: {err} "
                         "(expected a .keras file written by train_tpu.py)") from err
    if dtype not in ("keep", "float32", *_MIXED):
        raise ValueError(f"dtype must be float32, mixed_float16, mixed_bfloat16 or keep, not {dtype!r}")
    if dtype != "keep":
        _set_policies(config, dtype, frozenset(_output_names(config.get("config", {}).get("output_layers", []))))
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "model.keras")
        with zipfile.ZipFile(local, "w") as out:
            for item in archive.infolist():
                out.writestr(item, json.dumps(config) if item.filename == "config.json" else archive.read(item))
        previous = keras.mixed_precision.global_policy()
        if dtype != "keep":  # layers that follow the global policy follow the one asked for
            keras.mixed_precision.set_global_policy(dtype)
        try:
            return keras.models.load_model(local, compile=False)
        except Exception as err:
            raise ValueError(f"cannot load model {path}: {_newer_keras(archive)}{type(err).__name__}: {err}") from err
        finally:
            keras.mixed_precision.set_global_policy(previous)


def _newer_keras(archive: zipfile.ZipFile) -> str:
    """The likely cause of a failed load when the file was saved by a newer Keras than this one (a
    newer Keras writes config keys an older one rejects: a model trained on a GPU box with the
    newest Keras, predicted on Kaggle's image); "" otherwise."""
    from packaging.version import InvalidVersion, Version

    try:
        saved = json.loads(archive.read("metadata.json"))["keras_version"]
        newer = Version(saved) > Version(keras.__version__)
    except (KeyError, ValueError, TypeError, InvalidVersion):
        return ""
    if not newer:
        return ""
    return (f"it was saved with Keras {saved}, and this Keras ({keras.__version__}) may not read what a newer one "
            f"writes: install keras=={saved} here (on Kaggle, offline: docs/kaggle.md, 'When something goes wrong'), "
            "or train with this Keras. ")


def read_contract(path: str) -> dict | None:
    """The input contract a saved model carries (from its ``config.json``, no model is built), or None.

    >>> read_contract("runs/demo/model_cells/best.keras")["record_cell_size"]  # doctest: +SKIP
    128
    """
    if not fs.exists(path):
        raise FileNotFoundError(f"model {path} not found (a .keras file written by train_tpu.py: best.keras or last.keras)")
    try:
        config = json.loads(zipfile.ZipFile(io.BytesIO(fs.read_bytes(path))).read("config.json"))
    except Exception as err:
        raise ValueError(f"cannot read model {path}: {type(err).__name__}: {err} (expected a .keras file)") from err

    def find(node: Any) -> dict | None:
        if isinstance(node, dict):
            if node.get("class_name") == "InputContract":
                return node.get("config", {}).get("contract")
            return next((c for v in node.values() if (c := find(v)) is not None), None)
        if isinstance(node, list):
            return next((c for v in node if (c := find(v)) is not None), None)
        return None

    return find(config)


def backbone_of(model: keras.Model) -> keras.Model:
    """The backbone sub-model of an hpa-tf image or cell-bag model (named after its family)."""
    from hpa_tf.models.backbones import BACKBONES

    for layer in model.layers:
        if isinstance(layer, keras.Model) and layer.name in BACKBONES:
            return layer
    raise ValueError(f"{model.name}: no hpa-tf backbone inside (expected a model built by hpa_tf.models)")


def _candidates(backbone: str) -> list[keras.Model]:
    """Architectures a ``.weights.h5`` of ``backbone`` may hold, the ones with more variables first."""
    from hpa_tf.models.backbones import create_backbone
    from hpa_tf.models.cell import cell_model
    from hpa_tf.models.cellbag import cell_bag_model
    from hpa_tf.models.classifier import image_classifier

    return [image_classifier(backbone, 64, pooling="gem"), image_classifier(backbone, 64),
            cell_bag_model(backbone, 64, pooling="gem"), cell_bag_model(backbone, 64),
            cell_model(backbone, 64, pooling="gem"), cell_model(backbone, 64, pooling="avg"),
            create_backbone(backbone, (64, 64, 4))]


def _read_source(path: str, backbone: str) -> keras.Model:
    if not fs.exists(path):
        raise FileNotFoundError(f"model.init_from: {path} not found (a .keras or .weights.h5 of an hpa-tf model)")
    if path.endswith(".keras"):
        return load_model(path)
    if not path.endswith(".h5"):
        raise ValueError(f"model.init_from: {path} is neither a .keras nor a .weights.h5 file")
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "source.weights.h5")
        with open(local, "wb") as f:
            f.write(fs.read_bytes(path))
        for model in _candidates(backbone):
            try:
                model.load_weights(local)
                return model
            except Exception:  # noqa: BLE001 - not this architecture; try the next
                continue
    raise ValueError(f"model.init_from: {path} holds no hpa-tf model with a {backbone} backbone; "
                     "give the .keras file, or a .weights.h5 saved from a model of the same backbone")


def _head(model: keras.Model) -> tuple[np.ndarray, np.ndarray] | None:
    for name in _HEADS:
        try:
            kernel, bias = model.get_layer(name).get_weights()
        except ValueError:
            continue
        return kernel.reshape(-1, kernel.shape[-1]), bias
    return None


def init_from(model: keras.Model, path: str) -> list[str]:
    """Copy what fits of the hpa-tf checkpoint ``path`` into ``model``; returns what was copied.

    >>> init_from(cell_bag_model("efficientnet_b0", 128), "runs/image_b0/best.keras")  # doctest: +SKIP
    ['backbone efficientnet_b0', 'class head', 'GeM exponent']
    """
    target = backbone_of(model)
    source_model = _read_source(path, target.name)
    source = backbone_of(source_model)
    if source.name != target.name:
        raise ValueError(f"model.init_from: {path} has a {source.name} backbone, the config asks for {target.name}")
    try:
        target.set_weights(source.get_weights())
    except ValueError as err:
        raise ValueError(f"model.init_from: {path}: the backbone weights do not fit ({err})") from err
    copied = [f"backbone {target.name}"]
    src_head, dst_head = _head(source_model), _head(model)
    if src_head is not None and dst_head is not None and src_head[0].shape == dst_head[0].shape:
        layer = next(model.get_layer(n) for n in _HEADS if n in {layer.name for layer in model.layers})
        layer.set_weights([src_head[0].reshape(layer.kernel.shape), src_head[1]])
        copied.append("class head")
    pools = [m.get_layer("pool") if "pool" in {layer.name for layer in m.layers} else None for m in (source_model, model)]
    if all(p is not None and p.weights for p in pools):
        pools[1].set_weights(pools[0].get_weights())
        copied.append("GeM exponent")
    return copied
