"""Grad-CAM: where in an image a convolutional classifier looked for its answer.

Selvaraju et al. (2017): weight each channel of a convolutional layer's output by
the mean gradient of the class score over that channel, sum, keep the positive
part, and scale the small map up to the image.

By default the gradient is *not* averaged over the map first: each position's
activations are weighted by that position's own gradient (HiResCAM, Draelos &
Carin 2020). For a model ending in global pooling (most modern nets, airbench's
included) the gradient is the same everywhere and the two are identical; for a
model that flattens its map into a dense layer, like the seed CNN, averaging
mixes positions and the map can point anywhere. On synthetic images whose class
cue sits in one corner, the seed CNN's averaged map finds the corner about as
often as chance, the per-position one every time (tests/test_report.py), so the
per-position map is the default; ``method="gradcam"`` gives the classic one. The layer is the *last* layer
producing a 4-D ``(batch, height, width, channels)`` map that is a convolution (or
a nested model holding one), found by type, so any model here works: the seed
CNN (``conv2``), a model with batch norm and GELU, or one loaded from a file.

The class score differentiated is the log-probability of the class. Our models end
in a softmax inside the last layer, so logits are not exposed; the
log-probability is the logit minus a term shared by all classes, and unlike the
probability it does not flatten to zero gradient when the model is confident.
"""

from __future__ import annotations

import numpy as np

from cifarlab.errors import CifarlabError

# Probabilities are clipped here before the log, as in the loss (metrics.EPSILON).
_EPS = 1e-7


def _is_conv(layer) -> bool:
    from keras import layers

    return isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D, layers.Conv2DTranspose))


def _contains_conv(layer) -> bool:
    inner = getattr(layer, "layers", None)
    return bool(inner) and any(_is_conv(l) or _contains_conv(l) for l in inner)


def _output_rank(layer) -> int:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):
        return 0


def last_conv_layer(model):
    """The last top-level layer of ``model`` that is (or contains) a convolution with a 4-D output.

    Raises :class:`CifarlabError` for a model without one (a plain dense network).
    """
    for layer in reversed(model.layers):
        if (_is_conv(layer) or _contains_conv(layer)) and _output_rank(layer) == 4:
            return layer
    raise CifarlabError(f"model {model.name!r} has no convolutional layer with a 2-D feature map; "
                        "Grad-CAM needs one")


METHODS = ("hires", "gradcam")


def gradcam(model, images: np.ndarray, class_index=None, layer=None, batch_size: int = 64,
            method: str = "hires") -> np.ndarray:
    """Grad-CAM heat maps for ``images``.

    ``images``: uint8 or float pixels ``(N, H, W, 3)`` in 0-255 (what the model takes).
    ``class_index``: ``None`` (each image's predicted class), an int (one class for
    all) or ``(N,)`` ints. ``layer``: a layer or layer name; default
    :func:`last_conv_layer`. ``method``: ``"hires"`` (gradient times activation
    at each position, the default) or ``"gradcam"`` (gradient averaged over
    positions first, as published). Returns float32 ``(N, H, W)`` in [0, 1], each map
    scaled so its peak is 1 (all zeros where no region speaks for the class).
    """
    from keras import ops

    from cifarlab.backend import glue

    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise CifarlabError(f"Grad-CAM takes images shaped (N, H, W, 3), not {x.shape}")
    if method not in METHODS:
        raise CifarlabError(f"Grad-CAM method must be one of {', '.join(METHODS)}, not {method!r}")
    if isinstance(layer, str):
        layer = model.get_layer(layer)
    layer = layer or last_conv_layer(model)
    body, head = _split(model, layer)
    value_and_grad = glue().value_and_grad
    n, h, w = x.shape[:3]
    if class_index is None:
        targets = None
    else:
        targets = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (n,))
    maps = []
    for start in range(0, n, batch_size):
        fmap = body(ops.convert_to_tensor(x[start:start + batch_size]))

        def score(values):
            probs = ops.cast(head(values[0]), "float32")
            tb = ops.argmax(probs, axis=1) if targets is None else ops.convert_to_tensor(targets[start:start + batch_size])
            picked = ops.take_along_axis(probs, ops.cast(tb, "int32")[:, None], axis=1)
            return ops.sum(ops.log(ops.clip(picked, _EPS, 1.0))), probs

        # Under mixed precision the map is float16/bfloat16: differentiate through it as it is, then widen.
        _, (grads,) = value_and_grad(score)([fmap])
        grads, fmap = ops.cast(grads, "float32"), ops.cast(fmap, "float32")
        # (b, h', w', channels) per position, or (b, 1, 1, channels) averaged.
        weights = grads if method == "hires" else ops.mean(grads, axis=(1, 2), keepdims=True)
        cam = ops.relu(ops.sum(weights * fmap, axis=-1))[..., None]  # (b, h', w', 1)
        cam = ops.convert_to_numpy(ops.image.resize(cam, (h, w), interpolation="bilinear"))[..., 0]
        peak = cam.reshape(len(cam), -1).max(axis=1)
        cam = np.where(peak[:, None, None] > 0, cam / np.maximum(peak, 1e-12)[:, None, None], 0.0)
        maps.append(cam.astype(np.float32))
    return np.concatenate(maps)


def _split(model, layer):
    """Two functions, ``x -> layer's output`` and ``layer's output -> model's output``, so that the
    gradient with respect to the map is taken on any backend (each takes its own tensor).

    A Sequential model's symbolic ``layer.output`` can belong to an earlier build of its
    graph than ``model.outputs`` (Keras 3 rebuilds it), which would cut the path; so a
    Sequential model is run layer by layer, and any other (functional) model as two views of
    its own graph.
    """
    import keras

    if isinstance(model, keras.Sequential):
        cut = model.layers.index(layer) + 1

        def run(layers):
            def f(x):
                for lay in layers:
                    x = lay(x, training=False)
                return x
            return f

        return run(model.layers[:cut]), run(model.layers[cut:])
    body = keras.Model(model.inputs, layer.output)
    head = keras.Model(layer.output, model.outputs[0])
    return (lambda x: body(x, training=False)), (lambda f: head(f, training=False))


def overlay(image: np.ndarray, heat: np.ndarray, scale: int = 3, alpha: float = 0.45) -> np.ndarray:
    """An image with its heat map blended on top in the 'jet' colours, enlarged ``scale`` times.

    ``image`` uint8 ``(H, W, 3)``; ``heat`` float ``(H, W)`` in [0, 1]. Returns uint8
    ``(H*scale, W*scale, 3)``. Pixels are enlarged without smoothing (they are the data);
    the heat map is smoothed (it is an interpolation already).
    """
    from matplotlib import colormaps
    from PIL import Image

    h, w = heat.shape
    big = np.asarray(Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((w * scale, h * scale),
                                                                               Image.Resampling.NEAREST),
                     dtype=np.float32)
    heat_big = np.asarray(Image.fromarray(np.asarray(heat, dtype=np.float32), mode="F").resize(
        (w * scale, h * scale), Image.Resampling.BILINEAR))
    colours = colormaps["jet"](np.clip(heat_big, 0, 1))[..., :3] * 255
    return np.clip((1 - alpha) * big + alpha * colours, 0, 255).astype(np.uint8)
