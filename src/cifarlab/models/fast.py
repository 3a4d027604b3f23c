"""The ``fast`` and ``quick`` networks: a small VGG-style net after the "airbench" work.

Layout (``widths = (w1, w2, w3)``; ``fast`` is (64, 256, 256), ``quick`` (32, 64, 128);
``act`` is SiLU for fast, ReLU for quick, GELU in airbench: see ``FAST_ACTIVATION``)::

    pixels (B, 32, 32, 3) float32 0-255
    -> Rescaling(1/255)                               float32
    -> whiten: Conv 2x2 valid, 24 filters (B, 31, 31, 24)   float32, set from data (see
       :func:`init_whitening`) and never trained except its bias
    -> act
    -> 3 x block(w): Conv 3x3 same -> MaxPool 2 -> BN -> act -> Conv 3x3 same -> BN -> act
       (B, 15, 15, w1) -> (B, 7, 7, w2) -> (B, 3, 3, w3)
    -> GlobalMaxPool -> Dense(classes, no bias) -> Rescaling(1/9) = "logits"
    -> softmax (float32) = "probs"

Only stock Keras layers, so a saved model loads in Keras' safe mode with nothing
of cifarlab imported, and takes raw 0-255 pixels like every cifarlab model.
Batch norm has no learnable scale (``scale=False``): with the convolutions
scale-free under BN, a scale would only be a second, redundant learning rate.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers

WHITEN_KERNEL = 2  # 2x2 patches: 12 dimensions, so 12 eigenvectors and their negatives
WHITEN_WIDTH = 2 * 3 * WHITEN_KERNEL * WHITEN_KERNEL  # 24 filters
# Output scale of the classifier: the net's logits are divided by 9, so that the
# huge bias learning rates used for BN do not make the very first steps explode.
LOGIT_SCALE = 1.0 / 9


def _init():
    # PyTorch's default (uniform, std 1/sqrt(3 fan_in)), which airbench's learning
    # rates were tuned with: under batch norm the weight scale sets the effective
    # step size, and Glorot's is ~1.7x larger (3x smaller effective steps).
    return keras.initializers.VarianceScaling(1 / 3, mode="fan_in", distribution="uniform")


def build(num_classes: int = 10, widths=(64, 256, 256), activation: str = "gelu",
          act_dtype: str | None = None, bn_momentum: float = 0.6, bn_epsilon: float = 1e-5,
          name: str = "fast", dirac: bool = True) -> keras.Model:
    """Input ``(batch, 32, 32, 3)`` float pixels 0-255 -> ``(batch, num_classes)`` float32 probabilities.

    ``act_dtype`` forces batch norm and the activation into that dtype (e.g.
    ``"float32"`` under a bfloat16 policy); ``None`` uses the global policy.
    ``bn_momentum`` is Keras' (weight of the old running value): airbench's 0.6 keeps the
    running statistics close to the last few batches, which is what matters after a run of
    a few hundred steps whose weights move fast. ``dirac``: start the first ``c_in`` filters
    of each 3x3 conv as identities (airbench does), so the untrained net passes its input
    through, like a residual net.
    ``bn_epsilon``: 1e-5, TensorFlow's fused batch norm refuses less (airbench: 1e-12).
    """
    x = inputs = keras.Input(shape=(32, 32, 3), name="pixels")
    # The first two layers stay float32: the whitening filters amplify small
    # high-frequency components, which bfloat16's 8-bit mantissa would drown in noise.
    x = layers.Rescaling(1.0 / 255, dtype="float32", name="scale")(x)
    x = layers.Conv2D(WHITEN_WIDTH, WHITEN_KERNEL, padding="valid", dtype="float32", name="whiten")(x)
    x = layers.Activation(activation, dtype=act_dtype, name="whiten_act")(x)
    for i, w in enumerate(widths, start=1):
        x = layers.Conv2D(w, 3, padding="same", use_bias=False, kernel_initializer=_init(),
                          name=f"block{i}_conv1")(x)
        x = layers.MaxPool2D(2, name=f"block{i}_pool")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, scale=False, dtype=act_dtype,
                                      name=f"block{i}_bn1")(x)
        x = layers.Activation(activation, dtype=act_dtype, name=f"block{i}_act1")(x)
        x = layers.Conv2D(w, 3, padding="same", use_bias=False, kernel_initializer=_init(),
                          name=f"block{i}_conv2")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, scale=False, dtype=act_dtype,
                                      name=f"block{i}_bn2")(x)
        x = layers.Activation(activation, dtype=act_dtype, name=f"block{i}_act2")(x)
    x = layers.GlobalMaxPooling2D(name="pool")(x)
    x = layers.Dense(num_classes, use_bias=False, kernel_initializer=_init(), name="head")(x)
    x = layers.Rescaling(LOGIT_SCALE, dtype="float32", name="logits")(x)
    # float32 softmax even under mixed precision: probabilities must sum to 1.
    outputs = layers.Activation("softmax", dtype="float32", name="probs")(x)
    model = keras.Model(inputs, outputs, name=name)
    if dirac:
        for layer in model.layers:
            if isinstance(layer, layers.Conv2D) and layer.kernel.shape[0] == 3:
                k = np.array(layer.kernel)
                c_in = k.shape[2]
                k[:, :, :, :c_in] = 0
                k[1, 1, np.arange(c_in), np.arange(c_in)] = 1
                layer.kernel.assign(k)
    return model


# SiLU: a smooth activation like airbench's GELU, cheaper here, and the most accurate of the three
# at equal epochs (benchmarks/RESULTS.md, rows D-J).
FAST_ACTIVATION = "silu"
# quick keeps ReLU: on its small net SiLU's step cost and compile time outweigh its gain (benchmarks/RESULTS.md).
QUICK_ACTIVATION = "relu"


def build_fast(num_classes: int = 10, **kw) -> keras.Model:
    """The ``fast`` net: airbench94's widths (64, 256, 256); about 2.0 M parameters."""
    return build(num_classes, **{"widths": (64, 256, 256), "name": "fast", "activation": FAST_ACTIVATION, **kw})


def build_quick(num_classes: int = 10, **kw) -> keras.Model:
    """The ``quick`` net: the same design at widths (32, 64, 128), ReLU; about 0.25 M parameters."""
    return build(num_classes, **{"widths": (32, 64, 128), "name": "quick", "activation": QUICK_ACTIVATION, **kw})


def patches(x: np.ndarray, k: int = WHITEN_KERNEL) -> np.ndarray:
    """All k x k patches of uint8 images ``(N, H, W, C)`` as float64 ``(N*(H-k+1)*(W-k+1), k*k*C)``.

    The flattening order (row, column, channel) is the one of a Keras ``Conv2D``
    kernel ``(k, k, C, filters)`` reshaped to ``(k*k*C, filters)``.
    """
    w = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))  # (N, H', W', C, k, k)
    return w.transpose(0, 1, 2, 4, 5, 3).reshape(-1, k * k * x.shape[-1]).astype(np.float64) / 255.0


def init_whitening(model: keras.Model, x: np.ndarray, eps: float = 5e-4 / 16) -> None:
    """Set the ``whiten`` layer so its output channels are decorrelated, unit-variance patch components.

    ``x`` uint8 images ``(N, 32, 32, 3)`` (a few thousand suffice). Filters are the
    eigenvectors of the centred 2x2-patch covariance scaled by ``1/sqrt(eigenvalue + eps)``,
    followed by their negatives (so the activation after it loses nothing); the
    bias centres them. ``eps`` is airbench's 5e-4 for pixels normalised to unit
    std, converted to 0-1 pixels (CIFAR std is about 1/4, so variance 1/16).
    """
    p = patches(x)
    mean = p.mean(axis=0)
    cov = np.cov(p, rowvar=False)
    eigval, eigvec = np.linalg.eigh(cov)
    w = eigvec / np.sqrt(np.maximum(eigval, 0) + eps)  # (12, 12): column j is filter j
    w = np.concatenate([w, -w], axis=1)  # (12, 24)
    layer = model.get_layer("whiten")
    kernel = w.reshape(WHITEN_KERNEL, WHITEN_KERNEL, x.shape[-1], -1).astype("float32")
    layer.kernel.assign(kernel)
    layer.bias.assign((-mean @ w).astype("float32"))


def logits_model(model: keras.Model) -> keras.Model:
    """A view of ``model`` (same weights) that returns the float32 logits before softmax."""
    return keras.Model(model.inputs, model.get_layer("logits").output, name=f"{model.name}_logits")


def model_flops(model: keras.Model, size: int = 32) -> int:
    """Multiply-add FLOPs (2 per MAC) of one forward pass of one ``size`` x ``size`` image through the
    convs and dense layers (the fast nets are fully convolutional: any size from 8 up goes through)."""
    flops, h = 0, size
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            kh, kw, c_in, c_out = layer.kernel.shape
            if layer.padding == "valid":
                h = (h - kh) // layer.strides[0] + 1
            flops += 2 * h * h * c_out * kh * kw * c_in
        elif isinstance(layer, layers.MaxPool2D):
            h = h // layer.pool_size[0]
        elif isinstance(layer, layers.Dense):
            flops += 2 * math.prod(layer.kernel.shape)
    return int(flops)
