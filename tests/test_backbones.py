"""Pretrained weights reach the four-channel backbones exactly as keras' own three-channel models
use them: stand-in weights (random weights of keras' model saved to a file, nothing downloaded)."""

import keras
import keras.src.utils.file_utils as keras_file_utils
import numpy as np
import pytest

from hpa_tf.models import create_backbone
from hpa_tf.models.backbones import FAMILIES, _app, stem_conv

# keras' documented preprocessing of each family, applied to 0-255 RGB
PREPROCESS = {
    "EfficientNetB": keras.applications.efficientnet.preprocess_input,
    "EfficientNetV2": keras.applications.efficientnet_v2.preprocess_input,
    "ResNet": keras.applications.resnet.preprocess_input,
    "DenseNet": keras.applications.densenet.preprocess_input,
    "ConvNeXt": keras.applications.convnext.preprocess_input,
}
ONE_PER_FAMILY = ["efficientnet_b0", "efficientnetv2_s", "resnet50", "densenet121", "convnext_tiny"]
OTHERS = [n for n in FAMILIES if n not in ONE_PER_FAMILY]


def _stand_in_weights(name: str, path: str) -> str:
    keras.utils.set_random_seed(7)
    three = _app(FAMILIES[name])((64, 64, 3), None)
    for layer in three.layers:  # real weight files carry input statistics; make them non-trivial
        if isinstance(layer, keras.layers.Normalization):
            layer.set_weights([np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.3, 0.25]), np.array(1)])
    three.save_weights(path)
    return path


def _check(name: str, tmp_path, monkeypatch) -> None:
    family = FAMILIES[name]
    stand_in = _stand_in_weights(name, str(tmp_path / f"{name}.weights.h5"))
    # weights="imagenet" takes keras' download path: hand it the stand-in file instead
    monkeypatch.setattr(keras_file_utils, "get_file", lambda *a, **k: stand_in)
    preprocess = next(f for k, f in PREPROCESS.items() if family.keras_class.startswith(k))
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    rgby = np.concatenate([rgb / 255, rng.uniform(0, 1, (2, 64, 64, 1))], -1).astype("float32")
    for weights in ("imagenet", stand_in):
        cls = getattr(keras.applications, family.keras_class)
        reference = cls(include_top=False, weights=weights, input_shape=(64, 64, 3))(preprocess(rgb.copy())).numpy()
        four = create_backbone(name, (64, 64, 4), weights)
        stem = stem_conv(four)
        kernel, *rest = stem.get_weights()
        kernel[:, :, 3] = 0.0  # yellow sees nothing: the model must be keras' RGB model
        stem.set_weights([kernel, *rest])
        error = np.abs(four(rgby).numpy() - reference).max() / np.abs(reference).max()
        assert error < 1e-3, f"{name}, weights={weights!r}: relative error {error:.3g}"


# EfficientNet (0-255 and its extra rescaling), ResNet (caffe, BGR) and ConvNeXt (ImageNet mean/std) by
# default; EfficientNetV2 (x / 128 - 1) and DenseNet (torch-style) take 40 s each: in the slow run.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("efficientnetv2_s", "densenet121")
                                  else n for n in ONE_PER_FAMILY])
def test_four_channel_backbone_computes_keras_features(name, tmp_path, monkeypatch):
    _check(name, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("name", OTHERS)
def test_four_channel_backbone_computes_keras_features_every_size(name, tmp_path, monkeypatch):
    _check(name, tmp_path, monkeypatch)


def test_imagenet_from_a_local_copy_of_keras_file(tmp_path):
    """``imagenet:PATH`` (offline Kaggle) equals ``imagenet``: EfficientNet's extra ImageNet
    rescaling is applied, which a plain three-channel weights file does not get."""
    path = _stand_in_weights("efficientnet_b0", str(tmp_path / "b0.weights.h5"))
    x = np.random.default_rng(1).uniform(0, 1, (1, 64, 64, 4)).astype("float32")
    offline = create_backbone("efficientnet_b0", (64, 64, 4), f"imagenet:{path}")(x).numpy()
    plain = create_backbone("efficientnet_b0", (64, 64, 4), path)(x).numpy()
    assert not np.allclose(offline, plain, rtol=1e-2)
    with pytest.raises(FileNotFoundError, match="model.weights: .*nope.h5 not found"):
        create_backbone("resnet50", (64, 64, 4), str(tmp_path / "nope.h5"))
