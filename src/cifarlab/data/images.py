"""Decode any image file into the 32x32 RGB uint8 array every model here takes.

This is the single preprocessing path for image files: dataset folders,
``cifarlab predict`` and the HTTP service all call :func:`to_array`, so a model
sees the same pixels at training and at prediction time. Scaling to [0, 1] is not
done here: it is a layer inside each model (see ``cifarlab.models``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cifarlab.errors import CifarlabError

IMAGE_SIZE = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# A 32x32 classifier has no use for huge images; refusing them up front stops a
# decompression bomb (a tiny file declaring billions of pixels) before Pillow
# allocates anything. 40 megapixels is larger than any ordinary photo.
MAX_PIXELS = 40_000_000


# Distinct kinds of bad image, so a caller (the HTTP service) can answer each with
# its own status code; all are CifarlabError, so other callers need not care.
class ImageError(CifarlabError):
    """Some image file could not be turned into pixels."""


class NotAnImageError(ImageError):
    """The bytes are not an image format Pillow knows (or not a file at all)."""


class ImageTooLargeError(ImageError):
    """The header declares more pixels than allowed (a decompression bomb); nothing was allocated."""


class CorruptImageError(ImageError):
    """A recognised format whose data is truncated, corrupt or empty."""


def to_array(source: str | os.PathLike | bytes, name: str | None = None) -> np.ndarray:
    """Decode one image file (path or bytes) to a ``(32, 32, 3)`` uint8 RGB array.

    Any size, any Pillow mode: RGB, RGBA and LA (composited on white), L, P,
    CMYK, 1-bit, 16-bit and float greyscale. Non-square images are centre-cropped
    to a square before resizing, so objects keep their shape. EXIF rotation is
    applied. Raises :class:`ImageError` (a :class:`CifarlabError`; the subclass says which kind) naming the file for anything that is
    not a readable image (including truncated files and decompression bombs).
    """
    label = name or (str(source) if not isinstance(source, bytes) else "image")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise ImageTooLargeError(f"{label}: image is {w}x{h} pixels, more than the {MAX_PIXELS:,} allowed")
            if w == 0 or h == 0:
                raise CorruptImageError(f"{label}: image has no pixels")
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im)
    except CifarlabError:
        raise
    except FileNotFoundError:
        raise NotAnImageError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise NotAnImageError(f"{label}: is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise NotAnImageError(f"{label}: not an image file (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{label}: refused as a decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        # Pillow reports truncated or corrupt data as OSError/SyntaxError.
        raise CorruptImageError(f"{label}: unreadable image ({e})") from None
    return square_resize(rgb)


def square_resize(im: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """Centre-crop an RGB image to a square, resize to ``size``; uint8 ``(size, size, 3)``."""
    w, h = im.size
    if w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s))
    if im.size != (size, size):
        # BICUBIC in Pillow filters over the whole footprint when shrinking
        # (antialiased), so a large photo does not alias into noise at 32x32.
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.uint8)
    return arr.reshape(size, size, 3)


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # Pillow's own convert("RGB") clips 16-bit data at 255 (a white image);
        # rescale the real range to 8 bits instead.
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(a.max()), 1.0)
        if mode == "F" and a.max() <= 1.0:
            top = 1.0
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        im = Image.fromarray(a, mode="L")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    return im.convert("RGB")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
