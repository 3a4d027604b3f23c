"""Data augmentation as batched TensorFlow ops on uint8 images.

All functions take and return ``(B, H, W, C)`` tensors and keep the dtype (uint8
in training), so augmentation costs a few memory passes over bytes, runs inside
the compiled training step, and works the same on a GPU.
"""

from __future__ import annotations

import tensorflow as tf


def flip_where(x: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mirror left-right the images where ``mask`` (bool ``(B,)``) is true."""
    return tf.where(mask[:, None, None, None], tf.reverse(x, axis=[2]), x)


def crop(x: tf.Tensor, dy: tf.Tensor, dx: tf.Tensor, size: int) -> tf.Tensor:
    """Per-image crop: ``size x size`` window at row ``dy[i]``, column ``dx[i]`` (int32 ``(B,)``)."""
    r = tf.range(size, dtype=tf.int32)
    x = tf.gather(x, dy[:, None] + r, axis=1, batch_dims=1)
    return tf.gather(x, dx[:, None] + r, axis=2, batch_dims=1)


def pad_reflect(x: tf.Tensor, pad: int) -> tf.Tensor:
    """Pad height and width by ``pad`` pixels, mirroring the border (no black frame to learn)."""
    return tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")


def random_translate(x: tf.Tensor, pad: int, gen: tf.random.Generator) -> tf.Tensor:
    """Shift each image by a uniform random -pad..pad pixels in each axis (reflect-padded, same size)."""
    if pad == 0:
        return x
    return shift(x, pad, translate_draws(gen, tf.shape(x)[0], pad))


def translate_draws(gen: tf.random.Generator, n, pad: int) -> tf.Tensor:
    """The random numbers of :func:`random_translate` for ``n`` images: int32 ``(2, n)`` in 0..2*pad."""
    return gen.uniform([2, n], 0, 2 * pad + 1, dtype=tf.int32)


def shift(x: tf.Tensor, pad: int, draws: tf.Tensor) -> tf.Tensor:
    """:func:`random_translate` with its random numbers given (``draws`` from :func:`translate_draws`)."""
    return crop(pad_reflect(x, pad), draws[0], draws[1], x.shape[1])


def window_draws(gen: tf.random.Generator, n, size: int, window: int) -> tf.Tensor:
    """Corners of ``n`` random ``window`` x ``window`` windows of ``size`` x ``size`` images, for
    :func:`crop`: int32 ``(2, n)`` (rows, columns) in 0..size-window."""
    return gen.uniform([2, n], 0, size - window + 1, dtype=tf.int32)


def alternating_flip(flip_bits: tf.Tensor, epoch) -> tf.Tensor:
    """The derandomised flip: an image flipped in epoch 0 is unflipped in epoch 1, and so on.

    ``flip_bits`` bool ``(B,)`` drawn once per image for the whole run; every image
    is then seen mirrored in exactly half the epochs, with no run of repeats.
    """
    return tf.math.logical_xor(flip_bits, tf.cast(epoch % 2, tf.bool))
