"""Decode an image file into the 32x32 RGB uint8 array every model here takes.

This is the single preprocessing path for image files: dataset folders,
``cifarlab predict`` and the HTTP service all call :func:`to_array`, so a model
sees the same pixels at training and at prediction time. Callers differ only in
their limits (``formats``, ``max_pixels``): the HTTP service takes far fewer pixels
per image than a local training folder. Scaling to [0, 1] is not done here: it is
a layer inside each model (see ``cifarlab.models``).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cifarlab.errors import CifarlabError

IMAGE_SIZE = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Pillow format names decoded, everywhere. GIF and TIFF are left out on purpose: a
# GIF is a 256-colour palette (no photo a 32x32 classifier should see) with frames
# whose choice is arbitrary, and TIFF brings libtiff's dozen codecs, multi-page files
# and tiles, a large attack surface no camera or browser upload needs. Every other
# Pillow plugin (EPS runs Ghostscript) is never even tried.
FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
# Decoded pixels allowed per image for local files (training folders, predict): larger
# than any ordinary photo, and checked from the header before Pillow allocates anything.
MAX_PIXELS = 40_000_000
# A JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, Image.draft) as
# long as its short side stays at least this long: a 12-megapixel photo costs
# 0.2 megapixels, and the final 32x32 resize still filters over many source pixels.
DRAFT_MIN_SIDE = 4 * IMAGE_SIZE


# Distinct kinds of bad image, so a caller (the HTTP service) can answer each with
# its own status code; all are CifarlabError, so other callers need not care.
class ImageError(CifarlabError):
    """Some image file could not be turned into pixels."""


class NotAnImageError(ImageError):
    """The bytes are not one of the accepted formats (or not a file at all)."""


class ImageTooLargeError(ImageError):
    """The header declares more pixels than allowed (a decompression bomb); nothing was allocated."""


class CorruptImageError(ImageError):
    """A recognised format whose data is truncated, corrupt or empty."""


def probe(source: str | os.PathLike | bytes, name: str | None = None, *, formats=FORMATS,
          max_pixels: int = MAX_PIXELS) -> int:
    """Pixels that :func:`to_array` would decode (after JPEG draft scaling), read from the header only.

    Raises the same :class:`ImageError` kinds as :func:`to_array` for what the header
    already shows (wrong format, too many pixels, no pixels); cheap (tens of
    microseconds), so a caller can budget pixels over many images before decoding any.
    """
    with _opened(source, name, formats, max_pixels) as im:
        return im.size[0] * im.size[1]


def to_array(source: str | os.PathLike | bytes, name: str | None = None, *, formats=FORMATS,
             max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode one image file (path or bytes) to a ``(32, 32, 3)`` uint8 RGB array.

    ``formats``: Pillow format names accepted (default PNG, JPEG, BMP, WebP);
    ``max_pixels``: most pixels decoded for one image (a JPEG counts at its draft
    scale). Any Pillow mode: RGB, RGBA and LA (composited on white), L, P, CMYK,
    1-bit, 16-bit and float greyscale. Non-square images are centre-cropped to a
    square before resizing, so objects keep their shape. EXIF rotation is applied.
    Raises :class:`ImageError` (a :class:`CifarlabError`; the subclass says which
    kind) naming the file for anything that is not a readable image of an accepted
    format (including truncated files and decompression bombs).
    """
    with _opened(source, name, formats, max_pixels) as im:
        label = _label(source, name)
        try:
            im.load()
            return square_resize(_to_rgb(ImageOps.exif_transpose(im)))
        except (OSError, SyntaxError, ValueError) as e:
            # Pillow reports truncated or corrupt data as OSError/SyntaxError.
            raise CorruptImageError(f"{label}: unreadable image ({e})") from None


def _label(source, name) -> str:
    return name or (str(source) if not isinstance(source, bytes) else "image")


@contextlib.contextmanager
def _opened(source, name, formats, max_pixels):
    """The image, opened from its header and checked (format, size), with JPEG draft scaling set."""
    label = _label(source, name)
    try:
        im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=list(formats))
    except FileNotFoundError:
        raise NotAnImageError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise NotAnImageError(f"{label}: is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise NotAnImageError(f"{label}: not an image file of an accepted format "
                              f"({', '.join(formats)})") from None
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{label}: refused as a decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(f"{label}: unreadable image ({e})") from None
    with im:
        w, h = im.size
        if w == 0 or h == 0:
            raise CorruptImageError(f"{label}: image has no pixels")
        if im.format == "JPEG" and min(w, h) >= 2 * DRAFT_MIN_SIDE:
            im.draft(None, (DRAFT_MIN_SIDE, DRAFT_MIN_SIDE))  # keeps the short side >= DRAFT_MIN_SIDE
        dw, dh = im.size
        if dw * dh > max_pixels:
            raise ImageTooLargeError(f"{label}: image is {w}x{h} pixels, more than the {max_pixels:,} allowed")
        yield im


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
    if mode.startswith("I;16"):
        # Pillow's own convert("RGB") clips 16-bit data at 255 (a white image); rescale
        # the real range to 8 bits, in integers (4 bytes a pixel, not float64's 8).
        a = (np.asarray(im).astype(np.uint32) * 255 + 32767) // 65535
        im = Image.fromarray(a.astype(np.uint8), mode="L")
    elif mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float32)
        top = 1.0 if mode == "F" and a.max() <= 1.0 else max(float(a.max()), 1.0)
        im = Image.fromarray(np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), mode="L")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    return im.convert("RGB")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
