"""Decoding and validating images from the network: webcam frames and uploads.

Pillow reads the header first, so a decompression bomb is refused from its declared size before any pixel is
decoded; only JPEG, WebP and PNG are accepted.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sightscan.detector import preprocess

FORMATS = {"JPEG": "image/jpeg", "WEBP": "image/webp", "PNG": "image/png"}


class ImageRejected(ValueError):
    """A frame or upload that is not an acceptable image; `code` is machine-readable, the message human."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DecodedFrame:
    tensor: np.ndarray  # 3xSxS float32, the model's input
    width: int          # of the frame as sent
    height: int


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageRejected("not_an_image", "empty message")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("too_large", f"too many pixels: {exc}") from exc
    except Exception as exc:  # Pillow raises many types (UnidentifiedImageError, SyntaxError, struct.error...)
        raise ImageRejected("not_an_image", f"not a JPEG, WebP or PNG image: {type(exc).__name__}") from exc
    width, height = img.size
    if width <= 0 or height <= 0 or width * height > max_pixels:
        raise ImageRejected("too_large", f"{width}x{height} pixels is more than the {max_pixels} accepted")
    return img


def _load_rgb(img: Image.Image) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # truncated-file and EXIF chatter: a frame either decodes or not
            rgb = img.convert("RGB")
            arr = np.asarray(rgb)
    except Exception as exc:
        raise ImageRejected("not_an_image", f"the image does not decode: {type(exc).__name__}: {exc}") from exc
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        raise ImageRejected("not_an_image", f"unexpected decoded shape {arr.shape}")
    return arr


def decode_frame(data: bytes, size: int, max_pixels: int) -> DecodedFrame:
    """A webcam frame -> the model's input tensor. Runs on a worker thread (Pillow releases the GIL)."""
    img = _open(data, max_pixels)
    width, height = img.size
    if img.format == "JPEG":
        # Decode at the smallest DCT scale still >= the model's input: 2-4x less work for webcam-sized frames,
        # and the resize to SxS below averages the same pixels anyway.
        img.draft("RGB", (size, size))
    return DecodedFrame(preprocess(_load_rgb(img), size), width, height)


@dataclass(frozen=True)
class ValidatedUpload:
    data: bytes      # stored as sent: already encoded, never raw pixels
    mime_type: str
    width: int
    height: int


def validate_upload(data: bytes, max_pixels: int) -> ValidatedUpload:
    """Check an uploaded file decodes completely as a supported image; returns what the images row needs."""
    img = _open(data, max_pixels)
    mime = FORMATS[img.format or ""]
    width, height = img.size
    _load_rgb(img)
    return ValidatedUpload(data, mime, width, height)
