"""In-graph augmentations (no Python per example, TPU-friendly): geometry, intensity, cutout, and
the label-aware tricks from the winning write-ups.

Images are float32 in [0, 1] with channels red, green, blue, yellow; ``images`` may be one image
(H, W, 4) or a bag of them (N, H, W, 4) that shares one label vector.
"""

from __future__ import annotations

import tensorflow as tf

from hpa_tf.labels import NEGATIVE, NUM_CLASSES

GREEN, RED, YELLOW = 1, 0, 3
MICROTUBULES, ER = 10, 6


def _one_hot(cls: int) -> tf.Tensor:
    return tf.one_hot(cls, NUM_CLASSES, dtype=tf.float32)


def label_aware(images: tf.Tensor, labels: tf.Tensor, p_negative: float, p_swap: float) -> tuple[tf.Tensor, tf.Tensor]:
    """With probability ``p_negative`` dim the green channel to U(0, 0.1) of itself and relabel the
    sample Negative; else with probability ``p_swap`` replace green by red (-> Microtubules) or by
    yellow (-> ER) scaled by U(0.6, 1.0). Pixels and labels always change together."""
    u = tf.random.uniform([])
    green = images[..., GREEN]

    def negative():
        return green * tf.random.uniform([], 0.0, 0.1), _one_hot(NEGATIVE)

    def swap():
        use_red = tf.random.uniform([]) < 0.5
        source = tf.where(use_red, images[..., RED], images[..., YELLOW])
        return source * tf.random.uniform([], 0.6, 1.0), tf.where(use_red, _one_hot(MICROTUBULES), _one_hot(ER))

    def keep():
        return green, tf.cast(labels, tf.float32)

    new_green, new_labels = tf.case(
        [(u < p_negative, negative), (u < p_negative + p_swap, swap)], default=keep, exclusive=False
    )
    channels = tf.unstack(images, axis=-1)
    channels[GREEN] = new_green
    return tf.stack(channels, axis=-1), new_labels


def geometric(images: tf.Tensor, flip: bool, rot90: bool) -> tf.Tensor:
    """Random flips (each image of a bag on its own) and a random multiple of 90 degrees."""
    if flip:
        images = tf.image.random_flip_left_right(images)
        images = tf.image.random_flip_up_down(images)
    if rot90:
        images = tf.image.rot90(images, k=tf.random.uniform([], 0, 4, dtype=tf.int32))
    return images


def random_resized_crop(image: tf.Tensor, min_fraction: float) -> tf.Tensor:
    """Crop a random square of side U(min_fraction, 1) x the image and resize it back (static shape)."""
    if min_fraction >= 1.0:
        return image
    size = image.shape[0]
    side = tf.cast(tf.random.uniform([], min_fraction, 1.0) * size, tf.int32)
    top = tf.random.uniform([], 0, size - side + 1, dtype=tf.int32)
    left = tf.random.uniform([], 0, size - side + 1, dtype=tf.int32)
    crop = image[top : top + side, left : left + side]
    # An enlargement: bilinear is exact enough, antialiasing would only cost time.
    return tf.ensure_shape(tf.image.resize(crop, [size, size]), image.shape)


def intensity(images: tf.Tensor, brightness: float, contrast: float) -> tf.Tensor:
    """Per-channel contrast (a gain) and brightness (an offset), clipped to [0, 1]."""
    shape = [4]
    gain = tf.random.uniform(shape, 1.0 - contrast, 1.0 + contrast)
    offset = tf.random.uniform(shape, -brightness, brightness)
    return tf.clip_by_value(images * gain + offset, 0.0, 1.0)


def cutout(image: tf.Tensor, fraction: float) -> tf.Tensor:
    """Zero a random square whose side is ``fraction`` of the image."""
    if fraction <= 0:
        return image
    size = image.shape[0]
    side = max(int(size * fraction), 1)
    top = tf.random.uniform([], 0, size - side + 1, dtype=tf.int32)
    left = tf.random.uniform([], 0, size - side + 1, dtype=tf.int32)
    rows = tf.range(size)[:, None]
    cols = tf.range(size)[None, :]
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return image * tf.cast(~inside, image.dtype)[..., None]


def augment_image(image: tf.Tensor, labels: tf.Tensor, cfg: dict) -> tuple[tf.Tensor, tf.Tensor]:
    """All image-level augmentations of the ``augment`` config section."""
    image = geometric(image, cfg["flip"], cfg["rot90"])
    image = random_resized_crop(image, cfg["crop_min"])
    image = intensity(image, cfg["brightness"], cfg["contrast"])
    image = cutout(image, cfg["cutout"])
    return label_aware(image, labels, cfg["p_negative"], cfg["p_swap"])


def augment_bag(cells: tf.Tensor, labels: tf.Tensor, cfg: dict) -> tuple[tf.Tensor, tf.Tensor]:
    """Augmentations of a bag of cell crops (N, S, S, 4) sharing the image's labels."""
    cells = geometric(cells, cfg["flip"], cfg["rot90"])
    cells = intensity(cells, cfg["brightness"], cfg["contrast"])
    return label_aware(cells, labels, cfg["p_negative"], cfg["p_swap"])
