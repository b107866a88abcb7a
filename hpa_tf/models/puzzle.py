"""Puzzle-CAM (Jo & Yu 2021; the 3rd-place write-up, seed 001) as a training option of image models.

The image is cut into ``tiles`` x ``tiles`` pieces; each piece goes through the backbone alone and
their feature maps are put back together. Besides the usual loss on the whole image, the model is
trained to classify from the reassembled features too (weight ``model.puzzle_cls_weight``) and to
make the two class activation maps agree (``model.puzzle_re_weight`` x mean |ReLU(CAM(image)) -
ReLU(CAM(pieces))|): a CAM that sees a cell alone the way it sees it in the whole image localises it
better. Pure TensorFlow ops with static shapes: it runs under every strategy and under XLA.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def split_tiles(images: tf.Tensor, tiles: int) -> tf.Tensor:
    """(B, S, S, C) -> (B * tiles^2, S / tiles, S / tiles, C), row-major per image."""
    b, s, c = tf.shape(images)[0], images.shape[1], images.shape[-1]
    t = s // tiles
    x = tf.reshape(images, [b, tiles, t, tiles, t, c])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
    return tf.reshape(x, [b * tiles * tiles, t, t, c])


def merge_tiles(pieces: tf.Tensor, tiles: int) -> tf.Tensor:
    """The inverse of :func:`split_tiles` on feature maps: (B * tiles^2, h, w, C) -> (B, tiles h, tiles w, C)."""
    h, w, c = pieces.shape[1], pieces.shape[2], pieces.shape[3]
    x = tf.reshape(pieces, [-1, tiles, tiles, h, w, c])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
    return tf.reshape(x, [-1, tiles * h, tiles * w, c])


class PuzzleCAM:
    """The three Puzzle-CAM outputs of an image classifier on a batch: whole-image probabilities,
    probabilities from the reassembled pieces, and each example's reconstruction loss.

    >>> probs, tile_probs, rec = PuzzleCAM(model, 2)(images, training=True)  # doctest: +SKIP
    """

    def __init__(self, model: keras.Model, tiles: int = 2):
        self.tiles = int(tiles)
        self.backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
        self.pool, self.cam = model.get_layer("pool"), model.get_layer("cam")
        self.dropout = next((layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)), None)
        size = model.inputs[0].shape[1]
        if size % self.tiles:
            raise ValueError(f"model.puzzle_tiles={self.tiles} does not divide the input size {size}")

    def _head(self, features: tf.Tensor, training: bool) -> tf.Tensor:
        pooled = self.pool(features)
        if self.dropout is not None:
            pooled = self.dropout(pooled, training=training)
        return tf.reshape(self.cam(pooled[:, None, None, :]), [-1, self.cam.filters])

    def __call__(self, images: tf.Tensor, training: bool = False) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        whole = self.backbone(images, training=training)
        pieces = merge_tiles(self.backbone(split_tiles(images, self.tiles), training=training), self.tiles)
        if pieces.shape[1] != whole.shape[1]:
            raise ValueError(f"the backbone's feature map of a piece ({pieces.shape[1] // self.tiles} px) is not "
                             f"1/{self.tiles} of the image's ({whole.shape[1]} px): choose another model.puzzle_tiles")
        probs = tf.sigmoid(tf.cast(self._head(whole, training), tf.float32))
        tile_probs = tf.sigmoid(tf.cast(self._head(pieces, training), tf.float32))
        cam_whole = tf.nn.relu(tf.cast(self.cam(whole), tf.float32))
        cam_pieces = tf.nn.relu(tf.cast(self.cam(pieces), tf.float32))
        rec = tf.reduce_mean(tf.abs(cam_whole - cam_pieces), axis=[1, 2, 3])
        return probs, tile_probs, rec
