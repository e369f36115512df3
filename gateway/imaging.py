"""Decoding and validating images from the network: webcam frames and uploads.

Pillow reads the header first, so an image is refused from its declared size before any pixel is decoded: a
decompression bomb (a few KB declaring tens of megapixels) costs a header parse, not its pixels. Frames have
their own, smaller pixel limit than uploads: a camera frame needs a few megapixels at most. Only JPEG, WebP and
PNG are accepted. Messages are for the client: they name what is wrong, never an exception class.
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


def probe(data: bytes, max_pixels: int, what: str = "image") -> Image.Image:
    """Open `data` reading only its header, and refuse it unless it is a JPEG, WebP or PNG of at most
    `max_pixels` pixels. Nothing is decoded yet: the caller decides how much decoding it needs."""
    if not data:
        raise ImageRejected("not_an_image", f"the {what} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("too_large", f"the {what} declares too many pixels (more than {max_pixels})") from exc
    except Exception as exc:  # Pillow raises many types (UnidentifiedImageError, SyntaxError, struct.error...)
        raise ImageRejected("not_an_image", f"the {what} is not a JPEG, WebP or PNG image") from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageRejected("not_an_image", f"the {what} declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageRejected("too_large", f"the {what} is {width}x{height} = {width * height} pixels; "
                            f"at most {max_pixels} are accepted")
    return img


def _decode(img: Image.Image, what: str, mode: str | None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # truncated-file and EXIF chatter: an image either decodes or not
            img.load()
            return img.convert(mode) if mode is not None and img.mode != mode else img
    except Exception as exc:
        raise ImageRejected("not_an_image", f"the {what} does not decode: it is truncated or corrupt") from exc


def decode_frame(data: bytes, size: int, max_pixels: int) -> DecodedFrame:
    """A webcam frame -> the model's input tensor. Runs on a worker thread (Pillow releases the GIL)."""
    img = probe(data, max_pixels, "frame")
    width, height = img.size
    if img.format == "JPEG":
        # Decode at the smallest DCT scale still >= the model's input: 2-4x less work for webcam-sized frames,
        # and the resize to SxS below averages the same pixels anyway.
        img.draft("RGB", (size, size))
    arr = np.asarray(_decode(img, "frame", "RGB"))
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        raise ImageRejected("not_an_image", "the frame does not decode to an RGB picture")
    return DecodedFrame(preprocess(arr, size), width, height)


@dataclass(frozen=True)
class ValidatedUpload:
    data: bytes      # stored as sent: already encoded, never raw pixels
    mime_type: str
    width: int
    height: int


def validate_upload(data: bytes, max_pixels: int) -> ValidatedUpload:
    """Check an uploaded file decodes completely as a supported image; returns what the images row needs.

    The pixels are decoded in the file's own mode (no RGB copy), and a JPEG at 1/8 scale: every byte of the
    stream is still read and checked, at a fraction of the memory."""
    img = probe(data, max_pixels, "upload")
    mime = FORMATS[img.format or ""]
    width, height = img.size
    if img.format == "JPEG":
        img.draft(img.mode, (max(1, width // 8), max(1, height // 8)))
    _decode(img, "upload", None)
    return ValidatedUpload(data, mime, width, height)
