"""Pictures in and out: reading a start picture, fitting it to a model's frame size, and coding frames.

OpenCV does the work (BGR on its side, RGB on ours). A picture is fitted by scaling it to cover the
frame and cutting the middle out, so nothing is stretched.
"""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np


class ImageError(ValueError):
    """A picture that cannot be read or used; the message names it."""


def read_image(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; ImageError if it is missing or not a picture OpenCV reads."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"no such image file: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageError(f"cannot read {path}: not an image file OpenCV can decode (PNG, JPEG, ...)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def fit_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale an RGB picture to cover height x width and cut out the middle, (height, width, 3) uint8."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
        raise ImageError(f"a picture must be (H, W, 3) RGB, not an array of shape {image.shape}")
    image = image[..., :3]
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and image.size and float(np.nanmax(image)) <= 1.0:
            image = image * 255.0  # floats in [0, 1]
        image = np.clip(np.nan_to_num(image), 0, 255).astype(np.uint8)
    scale = max(height / image.shape[0], width / image.shape[1])
    size = (max(width, round(image.shape[1] * scale)), max(height, round(image.shape[0] * scale)))
    shrinking = scale < 1
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    top, left = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return np.ascontiguousarray(resized[top : top + height, left : left + width])


def encode_png(image: np.ndarray) -> str:
    """An RGB picture as base64 PNG text (lossless, for a replay's header)."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ImageError("cannot code the picture as PNG")
    return base64.b64encode(data.tobytes()).decode("ascii")


def decode_png(text: str) -> np.ndarray:
    """The RGB picture of `encode_png`'s text; ImageError if it is not one."""
    try:
        data = np.frombuffer(base64.b64decode(text, validate=True), np.uint8)
    except ValueError as err:
        raise ImageError(f"not a base64 PNG: {err}") from err
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageError("not a PNG picture")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    """An RGB frame as JPEG bytes."""
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ImageError("cannot code the frame as JPEG")
    return data.tobytes()
