"""The hand-written ops the fast loop runs where TensorFlow's own cost more on this CPU.

- :func:`conv2d`: a 3x3 convolution whose kernel gradient, on small maps with many channels,
  is 9 matmuls instead of oneDNN's bfloat16 backward-weights op (half the rate of its forward one);
- :data:`ACTIVATIONS`: smooth activations computed in float32 as one XLA-fused loop each way.

Each computes what the TensorFlow op it replaces computes (``tests/test_fast.py`` checks values,
gradients and dtypes), so the Keras model saved from a run predicts what the loop trained.
"""

from __future__ import annotations

import tensorflow as tf


def kernel_grad_by_matmul(size: int, c_in: int) -> bool:
    """Whether a 3x3 conv on ``size`` x ``size`` maps of ``c_in`` channels gets its kernel gradient by matmuls.

    Measured here (bfloat16, batch 1000-2000, oneDNN's backward-weights op against 9 matmuls):
    3x3 maps, 128 or 256 channels: 21 -> 10 ms and 74 -> 36 ms; 7x7 maps: 256 channels
    233 -> 205 ms, but 64 channels 19 -> 34 ms; 15x15 and larger: oneDNN always.
    """
    return size <= 3 or (size <= 7 and c_in >= 256)


def conv2d(x, kernel, strides, padding):
    """``tf.nn.conv2d``; where :func:`kernel_grad_by_matmul` says so (3x3 "SAME" stride-1 convs on
    small maps), the kernel's gradient is computed as 9 matmuls instead of oneDNN's backward-weights op.

    ``x`` ``(B, H, W, C_in)``, ``kernel`` ``(3, 3, C_in, C_out)``, same dtype. On this CPU oneDNN's
    bfloat16 backward-weights convolution runs at half the rate of its forward one; for small maps
    with many channels, the gradient as ``sum over b, h, w of x_shifted^T dy`` (one matmul per
    kernel tap, each reducing over B*H*W) is faster.
    """
    if (tuple(kernel.shape[:2]) != (3, 3) or padding != "SAME" or tuple(strides) not in ((1, 1), (1,))
            or x.shape[1] is None or not kernel_grad_by_matmul(max(x.shape[1], x.shape[2]), x.shape[3])):
        return tf.nn.conv2d(x, kernel, strides, padding)

    @tf.custom_gradient
    def conv(x, kernel):
        def grad(dy):
            dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=kernel, out_backprop=dy,
                                                strides=[1, 1, 1, 1], padding="SAME")
            h, w, c_in, c_out = x.shape[1], x.shape[2], x.shape[3], dy.shape[3]
            padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
            dy2 = tf.reshape(dy, [-1, c_out])
            taps = [tf.matmul(tf.reshape(padded[:, i:i + h, j:j + w, :], [-1, c_in]), dy2, transpose_a=True)
                    for i in range(3) for j in range(3)]
            return dx, tf.reshape(tf.stack(taps), [3, 3, c_in, c_out])

        return tf.nn.conv2d(x, kernel, 1, "SAME"), grad

    return conv(x, kernel)


def in_float32(fn, dfn):
    """An element-wise activation computed in float32 whatever the input dtype, with a hand-written
    gradient, each direction one XLA-fused loop.

    Without fusion every op of a smooth activation is its own pass over the tensor, and on this
    CPU TensorFlow's element-wise kernels are 2-3x slower in bfloat16 than in float32: GELU took
    a quarter of a ``fast`` step (731 images/s against 904 with ReLU). XLA compiles the cast,
    the function and the cast back into one loop each way, while the convolutions stay with
    oneDNN (XLA's own are 5x slower here). On a (2000, 15, 15, 64) bfloat16 tensor, forward +
    backward: ReLU 18 ms, SiLU 21 ms, GELU 29 ms; unfused, SiLU 41 and GELU 73 ms.
    ``fn(x)`` and ``dfn(x)`` (its derivative) take float32.
    """
    forward = tf.function(lambda x: tf.cast(fn(tf.cast(x, tf.float32)), x.dtype), jit_compile=True)
    backward = tf.function(lambda x, dy: tf.cast(tf.cast(dy, tf.float32) * dfn(tf.cast(x, tf.float32)), x.dtype),
                           jit_compile=True)

    @tf.custom_gradient
    def act(x):
        return forward(x), lambda dy: backward(x, dy)

    return act


_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def _gelu(x):
    return 0.5 * x * tf.math.erfc(-x * _SQRT_HALF)  # Keras' "gelu" is this exact (erf) form


def _dgelu(x):
    return 0.5 * tf.math.erfc(-x * _SQRT_HALF) + x * _INV_SQRT_2PI * tf.exp(-0.5 * x * x)


def _dsilu(x):
    s = tf.sigmoid(x)
    return s * (1 + x * (1 - s))


ACTIVATIONS = {
    "gelu": in_float32(_gelu, _dgelu),
    "silu": in_float32(tf.nn.silu, _dsilu),
    "relu": tf.nn.relu,  # already one cheap native op
    "linear": tf.identity,
}
