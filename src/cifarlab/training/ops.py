"""The hand-written ops the fast loop runs where TensorFlow's own may cost more on this CPU.

- :func:`conv2d`: a 3x3 convolution whose kernel gradient is oneDNN's backward-weights op or
  9 matmuls, whichever :mod:`cifarlab.training.autotune` measured faster for the shapes in hand;
- :func:`activation`: smooth activations computed in float32 as one XLA-fused loop each way, or
  TensorFlow's own op, again as measured.

Each variant computes what the TensorFlow op it replaces computes (``tests/test_fast.py`` checks
values, gradients and dtypes), so the Keras model saved from a run predicts what the loop trained.
"""

from __future__ import annotations

import tensorflow as tf

from cifarlab.training import autotune


def kernel_grad_by_matmul(size: int, c_in: int) -> bool:
    """The default where autotuning is off: whether a 3x3 conv on ``size`` x ``size`` maps of ``c_in``
    channels gets its kernel gradient by matmuls (on a 2-core AMD EPYC, bfloat16, batch 1000-2000,
    the matmuls won on 3x3 maps and on 7x7 maps of 256 channels; benchmarks/RESULTS.md)."""
    return size <= 3 or (size <= 7 and c_in >= 256)


def _grad_by_filter_op(x, dy, c_in):
    return tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=[3, 3, c_in, dy.shape[3]], out_backprop=dy,
                                           strides=[1, 1, 1, 1], padding="SAME")


def _grad_by_matmuls(x, dy, c_in):
    """``sum over b, h, w of x_shifted^T dy``: one matmul per kernel tap, each reducing over B*H*W."""
    h, w, c_out = x.shape[1], x.shape[2], dy.shape[3]
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    dy2 = tf.reshape(dy, [-1, c_out])
    taps = [tf.matmul(tf.reshape(padded[:, i:i + h, j:j + w, :], [-1, c_in]), dy2, transpose_a=True)
            for i in range(3) for j in range(3)]
    return tf.reshape(tf.stack(taps), [3, 3, c_in, c_out])


KERNEL_GRADS = {"onednn": _grad_by_filter_op, "matmul": _grad_by_matmuls}


def kernel_grad_method(x_shape, c_out: int, dtype) -> str:
    """The kernel-gradient method (a key of :data:`KERNEL_GRADS`) for a 3x3 "SAME" conv of inputs
    ``x_shape`` ``(B, H, W, C_in)`` to ``c_out`` channels in ``dtype``: measured once per machine
    (:func:`autotune.choose`), the size rule of :func:`kernel_grad_by_matmul` where it cannot be."""
    b, h, w, c_in = x_shape
    default = "matmul" if kernel_grad_by_matmul(max(h, w), c_in) else "onednn"
    if b is None:
        return default
    key = f"conv3x3_kernel_grad/{tf.as_dtype(dtype).name}/{b}x{h}x{w}x{c_in}->{c_out}"
    with tf.init_scope():  # measured eagerly, also when asked while a step is being traced
        x = tf.random.stateless_normal(x_shape, seed=[0, 1], dtype=tf.float32)
        dy = tf.random.stateless_normal([b, h, w, c_out], seed=[2, 3], dtype=tf.float32)
        x, dy = tf.cast(x, dtype), tf.cast(dy, dtype)
        runs = {name: tf.function(lambda fn=fn: fn(x, dy, c_in)) for name, fn in KERNEL_GRADS.items()}
        return autotune.choose(key, {name: (lambda f=f: f().numpy()) for name, f in runs.items()}, default)


def conv2d(x, kernel, strides, padding):
    """``tf.nn.conv2d``; for 3x3 "SAME" stride-1 convs with static shapes, the kernel's gradient is
    computed by the method :func:`kernel_grad_method` picks (decided when the gradient is first traced,
    so forward-only use measures nothing).

    ``x`` ``(B, H, W, C_in)``, ``kernel`` ``(3, 3, C_in, C_out)``, same dtype.
    """
    if (tuple(kernel.shape[:2]) != (3, 3) or padding != "SAME" or tuple(strides) not in ((1, 1), (1,))
            or None in x.shape[1:]):
        return tf.nn.conv2d(x, kernel, strides, padding)

    @tf.custom_gradient
    def conv(x, kernel):
        def grad(dy):
            dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=kernel, out_backprop=dy,
                                                strides=[1, 1, 1, 1], padding="SAME")
            method = kernel_grad_method(tuple(x.shape), dy.shape[3], x.dtype)
            return dx, KERNEL_GRADS[method](x, dy, x.shape[3])

        return tf.nn.conv2d(x, kernel, 1, "SAME"), grad

    return conv(x, kernel)


def in_float32(fn, dfn):
    """An element-wise activation computed in float32 whatever the input dtype, with a hand-written
    gradient, each direction one XLA-fused loop (the cast, the function and the cast back), while the
    convolutions stay with oneDNN. Unfused, every op of a smooth activation is its own pass over the
    tensor, and TensorFlow's bfloat16 element-wise kernels can be slower than its float32 ones.
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


_FUSED = {"gelu": in_float32(_gelu, _dgelu), "silu": in_float32(tf.nn.silu, _dsilu)}
_NATIVE = {"gelu": lambda x: tf.nn.gelu(x, approximate=False), "silu": tf.nn.silu, "relu": tf.nn.relu,
           "linear": tf.identity}


def activation(name: str, x):
    """Keras' activation ``name`` of ``x``, by the variant measured faster for its shape and dtype:
    the float32 XLA-fused one (:func:`in_float32`) or TensorFlow's own op (relu and linear: always
    their one cheap native op)."""
    if name not in _FUSED:
        return _NATIVE[name](x)
    default = "fused"
    if None in x.shape:
        return _FUSED[name](x)
    key = f"activation/{name}/{x.dtype.name}/{'x'.join(map(str, x.shape))}"
    with tf.init_scope():
        probe = tf.cast(tf.random.stateless_normal(x.shape, seed=[4, 5]), x.dtype)

        def timed(fn):
            # tf.gradients, not a tape: init_scope pauses every tape
            run = tf.function(lambda v: tf.gradients(fn(v), v)[0], autograph=False)
            return lambda: run(probe).numpy()

        choice = autotune.choose(key, {"fused": timed(_FUSED[name]), "native": timed(_NATIVE[name])}, default)
    return (_FUSED if choice == "fused" else _NATIVE)[name](x)


ACTIVATIONS = tuple(_NATIVE)  # the activations the fast loop can run
