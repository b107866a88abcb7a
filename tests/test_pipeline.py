import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from hpa_tf.config import ConfigError, load_config
from hpa_tf.data import augment
from hpa_tf.data.pipeline import count_images, make_dataset


def _image():
    rng = np.random.default_rng(0)
    return tf.constant(rng.uniform(0.2, 0.8, (16, 16, 4)).astype("float32"))


def test_label_aware_augmentation_changes_pixels_and_labels_together():
    img, labels = _image(), tf.constant(np.eye(19, dtype="float32")[2])
    tf.random.set_seed(0)
    neg_img, neg_lab = augment.label_aware(img, labels, p_negative=1.0, p_swap=0.0)
    assert np.argmax(neg_lab) == 18 and neg_lab.numpy().sum() == 1
    assert float(tf.reduce_max(neg_img[..., 1] / img[..., 1])) <= 0.1 + 1e-6
    assert np.allclose(neg_img.numpy()[..., [0, 2, 3]], img.numpy()[..., [0, 2, 3]])
    seen = set()
    for _ in range(20):
        sw_img, sw_lab = augment.label_aware(img, labels, p_negative=0.0, p_swap=1.0)
        cls = int(np.argmax(sw_lab))
        seen.add(cls)
        source = img[..., 0] if cls == 10 else img[..., 3]
        ratio = (sw_img[..., 1] / source).numpy()
        assert cls in (6, 10) and np.allclose(ratio, ratio.flat[0], atol=1e-5) and 0.6 - 1e-6 <= ratio.flat[0] <= 1.0
    assert seen == {6, 10}
    kept_img, kept_lab = augment.label_aware(img, labels, 0.0, 0.0)
    assert np.array_equal(kept_img, img) and np.array_equal(kept_lab, labels)


def test_geometric_and_intensity_keep_static_shapes():
    img = _image()
    for cell in (False, True):
        out = augment.augment_image(img, tf.zeros(19), load_config().augment.to_dict() | {"cutout": 0.25, "rotate": 180.0},
                                    cell=cell)
        assert out[0].shape == (16, 16, 4) and out[1].shape == (19,)
        assert 0.0 <= float(tf.reduce_min(out[0])) and float(tf.reduce_max(out[0])) <= 1.0


def test_free_rotation_is_a_rotation_about_the_centre_with_the_chosen_fill():
    from scipy import ndimage

    img = np.zeros((2, 33, 33, 4), np.float32)
    img[:, 16, 18:30, 1] = 1.0  # a bar right of the centre
    img[:, :3, :, 2] = 1.0  # a band along the top edge
    seed = tf.constant([3, 4])
    out = augment.rotate(tf.constant(img), 90.0, "CONSTANT", seed).numpy()
    angles = augment._uniform(seed, -90.0, 90.0, shape=[2]).numpy()
    assert abs(angles[0] - angles[1]) > 5  # each image of a bag turns on its own
    for k, angle in enumerate(angles):  # counter-clockwise in degrees, as scipy's reference
        reference = ndimage.rotate(img[k, ..., 1], angle, reshape=False, order=1)
        assert np.abs(out[k, ..., 1] - reference).max() < 1e-4
    assert out[..., 1].sum() == pytest.approx(img[..., 1].sum(), rel=0.05)  # the bar is inside: kept whole
    assert out[:, 16, 16, 0].max() == 0.0  # CONSTANT: pixels from outside are background
    reflected = augment.rotate(tf.constant(img), 90.0, "REFLECT", seed).numpy()
    assert reflected[..., 2].sum() > out[..., 2].sum()  # REFLECT brings the band back into the corners
    assert np.array_equal(augment.rotate(tf.constant(img), 0.0, seed=seed), img)  # 0 = off
    one = augment.rotate(tf.constant(img[0]), 90.0, "CONSTANT", seed)
    assert one.shape == (33, 33, 4)


def test_image_and_cell_bag_pipelines_over_records(built_records):
    cfg = load_config(None, [f"data.records={built_records}", "data.image_size=48", "data.cell_size=24",
                             "data.cells_per_bag=6", "data.max_eval_cells=40", "data.val_fold=0"])
    x, y = next(iter(make_dataset(cfg, True, 3)))
    assert x.shape == (3, 48, 48, 4) and y.shape == (3, 19) and x.dtype == tf.float32
    val = list(make_dataset(cfg, False, 2))
    assert sum(int(b[0].shape[0]) for b in val) == count_images(str(built_records), [0])
    cfg["data"]["kind"] = "cells"
    x, y, w = next(iter(make_dataset(cfg, True, 2)))
    assert x["cells"].shape == (2, 6, 24, 24, 4) and x["mask"].shape == (2, 6)
    assert y["cells"].shape == (2, 6, 19) and np.array_equal(w["cells"], x["mask"])
    x, y, w = next(iter(make_dataset(cfg, False, 1)))
    n = int(x["mask"].numpy().sum())
    assert x["cells"].shape == (1, 40, 24, 24, 4) and 5 < n <= 40
    assert float(tf.reduce_max(tf.abs(x["cells"][0, n:]))) == 0.0  # padded cells are empty


def test_mixup_mixes_pixels_and_labels_by_one_weight_the_same_way_each_time(built_records):
    base = [f"data.records={built_records}", "data.image_size=32", "data.deterministic=true", "data.val_fold=0"]
    plain_x, plain_y = next(iter(make_dataset(load_config(None, base), True, 4)))
    cfg = load_config(None, [*base, "augment.mixup=0.4"])
    x, y = next(iter(make_dataset(cfg, True, 4)))
    a, b = plain_x.numpy().reshape(4, -1), plain_x.numpy()[::-1].reshape(4, -1)
    lams = []
    for i in range(4):
        # x_i = lam a_i + (1 - lam) b_i: lam by least squares over the pixels, then the labels must agree.
        lam = float(np.dot(x.numpy().reshape(4, -1)[i] - b[i], a[i] - b[i]) / np.dot(a[i] - b[i], a[i] - b[i]))
        assert np.allclose(x.numpy().reshape(4, -1)[i], lam * a[i] + (1 - lam) * b[i], atol=1e-5)
        assert np.allclose(y[i], lam * plain_y[i] + (1 - lam) * plain_y.numpy()[::-1][i], atol=1e-5)
        lams.append(lam)
    assert all(0 <= v <= 1 for v in lams) and len(set(np.round(lams, 4))) == 4, lams  # one weight per example
    again = next(iter(make_dataset(cfg, True, 4)))[0]
    assert np.array_equal(again, x) and not np.array_equal(next(iter(make_dataset(cfg, True, 4, epoch=1)))[0], x)
    with pytest.raises(ConfigError, match="augment.mixup"):
        load_config(None, ["model.kind=cells", "augment.mixup=0.2"])


def test_repeat_factor_sampling_shows_each_image_as_often_as_its_rarest_class_says(synth_dir, tmp_path):
    from tfrecord_builder.__main__ import main as build

    # Three images of Nucleoplasm alone (in every image: factor 1) and one with Nuclear bodies too (in a
    # quarter of the images: factor sqrt(1 / 0.25) = 2 at threshold 1), so it comes up 2 / 5 of the time.
    ids = pd.read_csv(synth_dir / "train.csv")["ID"].tolist()
    pd.DataFrame({"ID": ids, "Label": ["0", "0", "0", "0|5"]}).to_csv(tmp_path / "train.csv", index=False)
    assert build(["build", "--data", str(synth_dir / "train"), "--labels", str(tmp_path / "train.csv"), "--out",
                  str(tmp_path / "records"), "--image-size", "16", "--cell-size", "16", "--folds", "2"]) == 0
    base = [f"data.records={tmp_path / 'records'}", "data.image_size=8", "data.deterministic=true", "data.val_folds=[]",
            "augment.p_negative=0", "augment.p_swap=0"]
    for extra, rare_share in ((), 1 / 4), (("data.repeat_threshold=1.0",), 2 / 5):
        labels = np.concatenate([y.numpy() for _, y in make_dataset(load_config(None, [*base, *extra]), True, 100).take(20)])
        assert abs(labels[:, 5].mean() - rare_share) < 0.035 and labels[:, 0].min() == 1, (extra, labels[:, 5].mean())
    with pytest.raises(ConfigError, match="data.repeat_threshold"):
        load_config(None, ["data.repeat_threshold=2"])


@pytest.mark.parametrize("n_files", [1, 3])
def test_input_pipelines_split_the_records_disjointly_with_fewer_files_than_pipelines(tmp_path, n_files):
    """Two workers on one shard (or on 3 shards, unevenly): each worker reads its own part (whole
    files when there are enough, else every other record) and together they read every record once."""
    from hpa_tf.data.pipeline import _files_dataset

    files = []
    for f in range(n_files):
        path = str(tmp_path / f"r{f}.tfrec")
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(7):
                writer.write(f"{f}-{i}".encode())
        files.append(path)
    parts = [[r.decode() for r in _files_dataset(files, "", True, False, 0, tf.distribute.InputContext(2, i, 2))
              .as_numpy_iterator()] for i in range(2)]
    assert all(parts) and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(f"{f}-{i}" for f in range(n_files) for i in range(7))
