"""In-graph augmentations (no Python per example, TPU-friendly): geometry, intensity, cutout, and
the label-aware tricks from the winning write-ups, and mixup of a batch.

Images are float32 in [0, 1] with channels red, green, blue, yellow; ``images`` may be one image
(H, W, 4) or a bag of them (N, H, W, 4) that shares one label vector.

Every random draw is stateless, from a ``seed`` (a shape-[2] integer tensor) that the pipeline
derives from (``data.seed``, epoch, position in the epoch): an epoch's augmentations are the same
whenever it is rebuilt, so a run resumed after a kill sees exactly the batches an uninterrupted run
sees. Without a seed, one is drawn from TensorFlow's global generator (handy in notebooks).
"""

from __future__ import annotations

import tensorflow as tf

from hpa_tf.labels import NEGATIVE, NUM_CLASSES

GREEN, RED, YELLOW = 1, 0, 3
MICROTUBULES, ER = 10, 6


def _seeds(seed: tf.Tensor | None, n: int) -> list[tf.Tensor]:
    """``n`` independent stateless seeds from one."""
    if seed is None:
        seed = tf.random.uniform([2], 0, 2**31 - 1, dtype=tf.int64)
    return tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=n))


def _uniform(seed: tf.Tensor, low=0.0, high=1.0, shape=(), dtype=tf.float32) -> tf.Tensor:
    return tf.random.stateless_uniform(list(shape), seed, low, high, dtype=dtype)


def _one_hot(cls: int) -> tf.Tensor:
    return tf.one_hot(cls, NUM_CLASSES, dtype=tf.float32)


def label_aware(images: tf.Tensor, labels: tf.Tensor, p_negative: float, p_swap: float,
                seed: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """With probability ``p_negative`` dim the green channel to U(0, 0.1) of itself and relabel the
    sample Negative; else with probability ``p_swap`` replace green by red (-> Microtubules) or by
    yellow (-> ER) scaled by U(0.6, 1.0). Pixels and labels always change together."""
    s_pick, s_dim, s_which, s_gain = _seeds(seed, 4)
    u = _uniform(s_pick)
    green = images[..., GREEN]

    def negative():
        return green * _uniform(s_dim, 0.0, 0.1), _one_hot(NEGATIVE)

    def swap():
        use_red = _uniform(s_which) < 0.5
        source = tf.where(use_red, images[..., RED], images[..., YELLOW])
        return source * _uniform(s_gain, 0.6, 1.0), tf.where(use_red, _one_hot(MICROTUBULES), _one_hot(ER))

    def keep():
        return green, tf.cast(labels, tf.float32)

    new_green, new_labels = tf.case(
        [(u < p_negative, negative), (u < p_negative + p_swap, swap)], default=keep, exclusive=False
    )
    channels = tf.unstack(images, axis=-1)
    channels[GREEN] = new_green
    return tf.stack(channels, axis=-1), new_labels


def geometric(images: tf.Tensor, flip: bool, rot90: bool, seed: tf.Tensor | None = None) -> tf.Tensor:
    """Random flips (each image of a bag on its own) and a random multiple of 90 degrees."""
    s_lr, s_ud, s_rot = _seeds(seed, 3)
    if flip:
        images = tf.image.stateless_random_flip_left_right(images, s_lr)
        images = tf.image.stateless_random_flip_up_down(images, s_ud)
    if rot90:
        images = tf.image.rot90(images, k=_uniform(s_rot, 0, 4, dtype=tf.int32))
    return images


def rotate(images: tf.Tensor, max_degrees: float, fill_mode: str = "CONSTANT",
           seed: tf.Tensor | None = None) -> tf.Tensor:
    """Rotate about the centre by an angle drawn from U(-max_degrees, max_degrees) (one angle per
    image of a bag), bilinear; pixels from outside are zero (``CONSTANT``: a cell crop's background)
    or mirrored (``REFLECT``: a field, which goes on beyond its edge). 0 = off, 180 = any angle.

    Free-angle rotation on top of flips and quarter turns (the winners' shift-scale-rotate): a cell
    or a field has no preferred direction. TensorFlow's projective-transform op (what
    ``keras.layers.RandomRotation`` runs), with a stateless angle.

    >>> rotate(tf.zeros([2, 64, 64, 4]), 180.0, seed=tf.constant([1, 2])).shape
    TensorShape([2, 64, 64, 4])
    """
    if max_degrees <= 0:
        return images
    batch = images if images.shape.rank == 4 else images[None]
    n = tf.shape(batch)[0]
    h, w = float(batch.shape[1]), float(batch.shape[2])
    theta = _uniform(seed, -max_degrees, max_degrees, shape=[n]) * (3.141592653589793 / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    # Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2): a rotation about the centre.
    cx, cy = (w - 1) / 2, (h - 1) / 2
    transforms = tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                           sin, cos, cy - sin * cx - cos * cy,
                           tf.zeros_like(cos), tf.zeros_like(cos)], axis=1)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=batch, transforms=transforms, output_shape=tf.shape(batch)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode=fill_mode)
    out = tf.ensure_shape(out, batch.shape)
    return out if images.shape.rank == 4 else out[0]


def random_resized_crop(image: tf.Tensor, min_fraction: float, seed: tf.Tensor | None = None) -> tf.Tensor:
    """Crop a random square of side U(min_fraction, 1) x the image and resize it back (static shape)."""
    if min_fraction >= 1.0:
        return image
    s_side, s_top, s_left = _seeds(seed, 3)
    size = image.shape[0]
    side = tf.cast(_uniform(s_side, min_fraction, 1.0) * size, tf.int32)
    top = _uniform(s_top, 0, size - side + 1, dtype=tf.int32)
    left = _uniform(s_left, 0, size - side + 1, dtype=tf.int32)
    crop = image[top : top + side, left : left + side]
    # An enlargement: bilinear is exact enough, antialiasing would only cost time.
    return tf.ensure_shape(tf.image.resize(crop, [size, size]), image.shape)


def intensity(images: tf.Tensor, brightness: float, contrast: float, seed: tf.Tensor | None = None) -> tf.Tensor:
    """Per-channel contrast (a gain) and brightness (an offset), clipped to [0, 1]."""
    s_gain, s_offset = _seeds(seed, 2)
    gain = _uniform(s_gain, 1.0 - contrast, 1.0 + contrast, shape=[4])
    offset = _uniform(s_offset, -brightness, brightness, shape=[4])
    return tf.clip_by_value(images * gain + offset, 0.0, 1.0)


def cutout(image: tf.Tensor, fraction: float, seed: tf.Tensor | None = None) -> tf.Tensor:
    """Zero a random square whose side is ``fraction`` of the image."""
    if fraction <= 0:
        return image
    s_top, s_left = _seeds(seed, 2)
    size = image.shape[0]
    side = max(int(size * fraction), 1)
    top = _uniform(s_top, 0, size - side + 1, dtype=tf.int32)
    left = _uniform(s_left, 0, size - side + 1, dtype=tf.int32)
    rows = tf.range(size)[:, None]
    cols = tf.range(size)[None, :]
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return image * tf.cast(~inside, image.dtype)[..., None]


def mixup(images: tf.Tensor, labels: tf.Tensor, alpha: float, seed: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Mixup (Zhang et al. 2018) of a batch: example i becomes ``lam_i * x_i + (1 - lam_i) * x_j`` with
    its labels mixed by the same ``lam_i ~ Beta(alpha, alpha)``, j the example at the mirrored position
    of the batch (timm's pairing: no shuffle to draw). ``images`` (B, H, W, 4), ``labels`` (B, 19),
    soft or hard; ``alpha`` 0 = off, 0.2-0.4 usual (most lam near 0 or 1).

    >>> x, y = mixup(tf.ones([4, 8, 8, 4]), tf.eye(4, 19), 0.4, seed=tf.constant([1, 2]))
    >>> x.shape, [round(float(v), 4) for v in tf.reduce_sum(y, 1)]
    (TensorShape([4, 8, 8, 4]), [1.0, 1.0, 1.0, 1.0])
    """
    if alpha <= 0:
        return images, labels
    s_a, s_b = _seeds(seed, 2)
    n = tf.shape(images)[:1]
    # Beta(a, a) from two gammas: a stateless draw (tf.random has no stateless beta).
    g_a = tf.random.stateless_gamma(n, s_a, alpha)
    g_b = tf.random.stateless_gamma(n, s_b, alpha)
    lam = g_a / tf.maximum(g_a + g_b, 1e-12)
    lam_x = tf.reshape(lam, [-1] + [1] * (images.shape.rank - 1))
    mixed = lam_x * images + (1.0 - lam_x) * tf.reverse(images, [0])
    labels = tf.cast(labels, tf.float32)
    return mixed, lam[:, None] * labels + (1.0 - lam[:, None]) * tf.reverse(labels, [0])


def _rotation_seed(geometric_seed: tf.Tensor) -> tf.Tensor:
    """The free rotation's seed, derived from the flips' (so configs without it draw as before)."""
    return tf.random.experimental.stateless_fold_in(tf.cast(geometric_seed, tf.int64), 1)


def augment_image(image: tf.Tensor, labels: tf.Tensor, cfg, seed: tf.Tensor | None = None,
                  cell: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """All image-level augmentations of the ``augment`` config section; ``cell``: the image is one
    cell crop (a free rotation fills the corners with background, not with the mirrored field)."""
    s_geo, s_crop, s_int, s_cut, s_label = _seeds(seed, 5)
    image = geometric(image, cfg["flip"], cfg["rot90"], s_geo)
    image = rotate(image, cfg["rotate"], "CONSTANT" if cell else "REFLECT", _rotation_seed(s_geo))
    image = random_resized_crop(image, cfg["crop_min"], s_crop)
    image = intensity(image, cfg["brightness"], cfg["contrast"], s_int)
    image = cutout(image, cfg["cutout"], s_cut)
    return label_aware(image, labels, cfg["p_negative"], cfg["p_swap"], s_label)


def augment_bag(cells: tf.Tensor, labels: tf.Tensor, cfg, seed: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Augmentations of a bag of cell crops (N, S, S, 4) sharing the image's labels."""
    s_geo, s_int, s_label = _seeds(seed, 3)
    cells = geometric(cells, cfg["flip"], cfg["rot90"], s_geo)
    cells = rotate(cells, cfg["rotate"], "CONSTANT", _rotation_seed(s_geo))
    cells = intensity(cells, cfg["brightness"], cfg["contrast"], s_int)
    return label_aware(cells, labels, cfg["p_negative"], cfg["p_swap"], s_label)
