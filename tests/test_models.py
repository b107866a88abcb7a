import keras
import numpy as np
import pytest
import tensorflow as tf

from hpa_tf.models import (
    BACKBONES, MaskedAttentionPool, MaskedBagPool, MultiLabelLoss, cam_model, cell_bag_model, create_backbone, image_classifier, widen_stem,
)


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_runs_forward_and_backward_on_four_channels(name):
    model = image_classifier(name, 64)
    x = tf.random.uniform((2, 64, 64, 4))
    y = tf.constant(np.eye(19, dtype="float32")[[0, 5]])
    with tf.GradientTape() as tape:
        loss = MultiLabelLoss()(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    assert model.output.shape == (None, 19) and np.isfinite(float(loss))
    assert all(g is not None for g in grads) and all(np.isfinite(g.numpy()).all() for g in grads)
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in grads) > 0


def test_three_channel_weights_from_a_local_file_widen_the_stem(tmp_path):
    keras.utils.set_random_seed(1)
    three = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    path = str(tmp_path / "resnet50_3ch.weights.h5")
    three.save_weights(path)
    four = create_backbone("resnet50", (64, 64, 4), weights=path)
    core = four.get_layer("resnet50")
    stem3, stem4 = three.get_layer("conv1_conv").get_weights()[0], core.get_layer("conv1_conv").get_weights()[0]
    rgb = stem3[:, :, ::-1]  # ResNet's ImageNet weights are caffe-style: blue, green, red
    assert stem4.shape[2] == 4 and np.allclose(stem4[:, :, :3], rgb)
    assert np.allclose(stem4[:, :, 3], (rgb[:, :, 0] + rgb[:, :, 1]) / 2)  # yellow = mean(red, green)
    assert np.allclose(three.get_layer("conv5_block3_3_conv").get_weights()[0], core.get_layer("conv5_block3_3_conv").get_weights()[0])
    assert widen_stem(np.ones((1, 1, 3, 2))).shape == (1, 1, 4, 2)


def test_losses_match_keras_and_weight_classes():
    rng = np.random.default_rng(0)
    y = (rng.random((8, 19)) > 0.7).astype("float32")
    p = rng.uniform(0.01, 0.99, (8, 19)).astype("float32")
    assert np.isclose(float(MultiLabelLoss("bce")(y, p)), float(keras.losses.BinaryCrossentropy()(y, p)), rtol=1e-5)
    keras_focal = keras.losses.BinaryFocalCrossentropy(gamma=2.0, apply_class_balancing=False)
    assert np.isclose(float(MultiLabelLoss("focal", 2.0)(y, p)), float(keras_focal(y, p)), rtol=1e-4)
    w = np.zeros(19)
    w[3] = 19.0
    only3 = float(MultiLabelLoss("bce", class_weights=w)(y, p))
    assert np.isclose(only3, float(keras.losses.BinaryCrossentropy()(y[:, 3:4], p[:, 3:4])), rtol=1e-5)


def test_padded_cells_never_reach_the_image_head():
    logits = np.zeros((1, 4, 19), "float32")
    logits[0, 3] = 50.0  # a padded cell with a huge score
    mask = np.array([[1, 1, 1, 0]], "float32")
    for mode in ("max", "lse"):
        assert float(np.max(MaskedBagPool(mode)([logits, mask]))) < 1.0
    features = np.random.default_rng(1).normal(size=(1, 4, 8)).astype("float32")
    logits[0, :3] = np.random.default_rng(2).normal(size=(3, 19))
    attention = MaskedAttentionPool(4)
    pooled = attention([features, logits, mask]).numpy()
    assert np.allclose(pooled, logits[:, :3].mean(axis=1), atol=1e-5)  # w starts at 0: the mean of the valid cells
    attention.set_weights([w + np.random.default_rng(3).normal(size=w.shape).astype("float32") for w in attention.get_weights()])
    weights = attention.attention(features, mask).numpy()
    assert np.allclose(weights.sum(axis=1), 1.0, atol=1e-5) and np.all(weights[0, 3] == 0.0)
    pooled = attention([features, logits, mask]).numpy()
    assert np.all(pooled <= logits[:, :3].max(axis=1) + 1e-5) and np.all(pooled >= logits[:, :3].min(axis=1) - 1e-5)
    assert np.all(attention([features, logits, np.zeros_like(mask)]).numpy() == 0.0)  # no valid cell: 0, not the padding
    with pytest.raises(ValueError, match="max, lse, attention, not 'attn'"):
        cell_bag_model("small_cnn", 32, bag_pooling="attn")
    for pooling in ("max", "attention"):
        model = cell_bag_model("small_cnn", 32, bag_pooling=pooling)
        cells = np.random.default_rng(0).random((1, 4, 32, 32, 4)).astype("float32")
        base = model({"cells": cells, "mask": mask})["image"].numpy()
        cells[0, 3] = 1.0  # change only the padded cell
        assert np.allclose(model({"cells": cells, "mask": mask})["image"].numpy(), base, atol=1e-6)


def test_attention_pooling_learns_which_cell_of_a_bag_carries_the_image_label(tmp_path):
    """model.bag_pooling=attention: trained on image labels alone (a bag is positive when one of its
    8 cells has a bright dot), the image head separates the bags, the attention of that class goes to
    the dotted cell, and the cell head ranks dotted cells above the rest; saves and loads back."""
    from hpa_tf.config import load_config
    from hpa_tf.models import build_model

    rng = np.random.default_rng(0)
    bags, n, size = 96, 8, 32
    cells = (rng.random((bags, n, size, size, 4)) * 0.3).astype("float32")
    labels = np.zeros((bags, 19), "float32")
    dotted = rng.integers(0, n, bags)
    for b in range(0, bags, 2):  # every other bag: one cell with a 3 x 3 bright green dot
        r, c = rng.integers(2, size - 5, 2)
        cells[b, dotted[b], r : r + 3, c : c + 3, 1] = 1.0
        labels[b, 12] = 1.0
    inputs = {"cells": cells, "mask": np.ones((bags, n), "float32")}
    keras.utils.set_random_seed(0)
    model = cell_bag_model("small_cnn", size, bag_pooling="attention", pooling="gem")
    model.compile(keras.optimizers.Adam(3e-3), {"image": "binary_crossentropy"})  # no cell loss: image labels only
    model.fit(inputs, {"image": labels}, epochs=12, batch_size=8, verbose=0)
    out = model.predict(inputs, verbose=0)
    assert out["image"][0::2, 12].min() > out["image"][1::2, 12].max()  # every positive bag above every negative one
    features = keras.Model(model.inputs, model.get_layer("features_to_bags").output)(inputs)
    weights = model.get_layer("bag_pool").attention(features, inputs["mask"]).numpy()[0::2, :, 12]
    assert np.mean(weights.argmax(axis=1) == dotted[0::2]) > 0.9  # attention on the dotted cell
    assert weights[np.arange(bags // 2), dotted[0::2]].mean() > 3.0 / n  # well above the mean's 1/8
    cell_scores = out["cells"][0::2, :, 12]
    others = np.ones_like(cell_scores, bool)
    others[np.arange(bags // 2), dotted[0::2]] = False
    assert cell_scores[~others].min() > np.median(cell_scores[others])
    model.save(tmp_path / "attention.keras")
    back = keras.models.load_model(tmp_path / "attention.keras")
    small = {key: value[:3] for key, value in inputs.items()}
    assert np.allclose(back(small)["image"], model(small)["image"], atol=1e-6)
    built = build_model(load_config("demo_cpu_cells", ["model.bag_pooling=attention"]))
    assert isinstance(built.get_layer("bag_pool"), MaskedAttentionPool)


def test_save_load_round_trip_predicts_the_same(tmp_path):
    x = np.random.default_rng(0).random((2, 64, 64, 4)).astype("float32")
    img = image_classifier("small_cnn", 64, pooling="gem")
    img.save(tmp_path / "img.keras")
    back = keras.models.load_model(tmp_path / "img.keras")
    assert np.allclose(back(x), img(x), atol=1e-6)
    assert cam_model(back)(x).shape == (2, 4, 4, 19)
    bag = {"cells": np.random.default_rng(1).random((2, 5, 32, 32, 4)).astype("float32"), "mask": np.ones((2, 5), "float32")}
    cells = cell_bag_model("small_cnn", 32, bag_pooling="lse", pooling="gem")
    cells.save(tmp_path / "cells.keras")
    back = keras.models.load_model(tmp_path / "cells.keras")
    for key in ("cells", "image"):
        assert np.allclose(back(bag)[key], cells(bag)[key], atol=1e-6)


def _same_weights(a: keras.Model, b: keras.Model) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def test_a_trained_model_starts_another_kind_and_size(tmp_path):
    from hpa_tf.config import load_config
    from hpa_tf.models import backbone_of, build_model

    keras.utils.set_random_seed(3)
    source = image_classifier("small_cnn", 64, pooling="gem")
    source.get_layer("pool").set_weights([np.array(4.5, "float32")])
    source.save(tmp_path / "image.keras")
    source.save_weights(tmp_path / "image.weights.h5")
    for path in (tmp_path / "image.keras", tmp_path / "image.weights.h5"):
        # the image model at 64 px starts one at 128 px, and a cell-bag model
        bigger = build_model(load_config(None, [f"model.init_from={path}", "data.image_size=128", "model.pooling=gem"]))
        assert _same_weights(backbone_of(bigger), backbone_of(source))
        assert np.array_equal(bigger.get_layer("cam").get_weights()[0], source.get_layer("cam").get_weights()[0])
        assert float(bigger.get_layer("pool").get_weights()[0]) == 4.5
        cells = build_model(load_config(None, [f"model.init_from={path}", "model.kind=cells", "data.kind=cells"]))
        assert _same_weights(backbone_of(cells), backbone_of(source))
        head = cells.get_layer("cell_logits").get_weights()[0]
        assert np.array_equal(head, source.get_layer("cam").get_weights()[0].reshape(head.shape))  # same map, reshaped
    with pytest.raises(ValueError, match="has a small_cnn backbone, the config asks for resnet50|no hpa-tf model with a resnet50"):
        build_model(load_config(None, [f"model.init_from={tmp_path / 'image.keras'}", "model.backbone=resnet50"]))


def test_a_model_a_newer_keras_saved_names_both_versions_when_it_cannot_load(tmp_path):
    import json
    import zipfile

    from hpa_tf.models import load_model

    image_classifier("small_cnn", 32).save(tmp_path / "image.keras")
    with zipfile.ZipFile(tmp_path / "image.keras") as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    conv = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Conv2D")
    conv["config"]["kernel_initializer"]["config"]["future_option"] = None  # a key only a newer Keras knows
    files["config.json"] = json.dumps(config).encode()
    for version, told in (("99.0.0", True), (keras.__version__, False)):
        files["metadata.json"] = json.dumps({"keras_version": version}).encode()
        with zipfile.ZipFile(tmp_path / "newer.keras", "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        with pytest.raises(ValueError, match="newer.keras") as err:
            load_model(str(tmp_path / "newer.keras"))
        assert (f"saved with Keras 99.0.0, and this Keras ({keras.__version__})" in str(err.value)) is told


def test_a_bfloat16_model_loads_in_float32(tmp_path):
    from hpa_tf.models import load_model

    x = np.random.default_rng(0).random((2, 64, 64, 4)).astype("float32")
    keras.mixed_precision.set_global_policy("mixed_bfloat16")  # as on a TPU
    try:
        keras.utils.set_random_seed(0)
        trained = cell_bag_model("small_cnn", 32, pooling="gem")
        image = image_classifier("small_cnn", 64)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    trained.save(tmp_path / "cells.keras")
    image.save(tmp_path / "image.keras")
    loaded = load_model(str(tmp_path / "image.keras"))
    assert {layer.compute_dtype for layer in loaded._flatten_layers()} == {"float32"}
    reference = image_classifier("small_cnn", 64)  # the same weights in a float32 model
    reference.set_weights(image.get_weights())
    assert np.allclose(loaded(x), reference(x), atol=1e-6)
    kept = load_model(str(tmp_path / "image.keras"), dtype="keep")
    assert "bfloat16" in {layer.compute_dtype for layer in kept._flatten_layers()}
    cells = load_model(str(tmp_path / "cells.keras"))
    bag = {"cells": x[:1, None, :32, :32].repeat(3, axis=1), "mask": np.ones((1, 3), "float32")}
    assert cells(bag)["cells"].dtype == "float32" and cells(bag)["cells"].shape == (1, 3, 19)


def test_avg_and_max_pooling_of_a_cell_learns_a_single_bright_spot(tmp_path):
    """model.pooling=avgmax: a cell model learns a class shown by one small bright dot (the max
    half sees it), saves and loads back; an image model refuses it (its CAM needs avg or gem)."""
    from hpa_tf.config import ConfigError, load_config
    from hpa_tf.models import build_model, cell_model

    rng = np.random.default_rng(0)
    x = (rng.random((128, 32, 32, 4)) * 0.3).astype("float32")
    y = np.zeros((128, 19), "float32")
    for i in range(0, 128, 2):  # every other cell: a 2 x 2 bright green dot somewhere
        r, c = rng.integers(2, 28, 2)
        x[i, r : r + 2, c : c + 2, 1] = 1.0
        y[i, 12] = 1.0
    keras.utils.set_random_seed(0)
    model = cell_model("small_cnn", 32, pooling="avgmax")
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    probs = model.predict(x, verbose=0)[:, 12]
    assert model.evaluate(x, y, verbose=0) < 0.5 * before
    assert probs[0::2].min() > probs[1::2].max()  # every dotted cell above every plain one
    model.save(tmp_path / "cell.keras")
    assert np.allclose(keras.models.load_model(tmp_path / "cell.keras").predict(x[:4], verbose=0),
                       model.predict(x[:4], verbose=0), atol=1e-6)
    assert isinstance(build_model(load_config("demo_cpu_cell", ["model.pooling=avgmax"])).get_layer("pool"),
                      keras.layers.Concatenate)
    with pytest.raises(ConfigError, match="avgmax"):
        load_config("demo_cpu", ["model.pooling=avgmax"])


def test_a_space_to_depth_stem_keeps_the_fine_texture_a_resize_loses(tmp_path):
    """small_cnn_s2d: the 2 x 2 pixel blocks become channels (tf.nn.space_to_depth's order), so a
    cell model at full size learns a 1 px texture that halving the cell's size removes."""
    from hpa_tf.models import cell_model
    from hpa_tf.models.layers import SpaceToDepth

    x = np.random.default_rng(1).random((2, 8, 6, 4)).astype("float32")
    assert np.array_equal(SpaceToDepth(2)(x).numpy(), tf.nn.space_to_depth(x, 2).numpy())
    rng = np.random.default_rng(0)
    n, size = 128, 32
    cells = np.full((n, size, size, 4), 0.1, "float32")
    y = np.zeros((n, 19), "float32")
    level = rng.uniform(0.3, 0.7, n).astype("float32")
    cells[..., 1] = level[:, None, None]
    cells[0::2, 0::2, :, 1] += 0.2  # every other cell: 1 px stripes of the same mean brightness
    cells[0::2, 1::2, :, 1] -= 0.2
    y[0::2, 8] = 1.0
    cells += rng.normal(0, 0.02, cells.shape).astype("float32")
    halved = tf.image.resize(cells, [size // 2, size // 2], antialias=True).numpy()
    stripes = np.abs(halved[0::2, ..., 1] - level[0::2, None, None]).mean()
    assert stripes < 0.03  # at half size the stripes are gone: nothing for a 64 px demo model to learn
    keras.utils.set_random_seed(0)
    model = cell_model("small_cnn_s2d", size, pooling="gem")
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
    model.fit(cells, y, epochs=8, batch_size=32, verbose=0)
    probs = model.predict(cells, verbose=0)[:, 8]
    assert probs[0::2].min() > probs[1::2].max()  # every striped cell above every flat one
    model.save(tmp_path / "s2d.keras")
    assert np.allclose(keras.models.load_model(tmp_path / "s2d.keras").predict(cells[:4], verbose=0),
                       model.predict(cells[:4], verbose=0), atol=1e-6)
    from hpa_tf.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.cell_size: 63 px .* even size"):
        load_config("demo_cpu_cell", ["model.backbone=small_cnn_s2d", "data.cell_size=63"])
