"""Validation of a worker request: every refusal names the problem and the fix (no "NETWORK ERROR")."""
from __future__ import annotations

import base64
import binascii
import io
import math
import warnings

#: the default of the worker's --max-image-pixels: the pixels of all a request's images together; a request over it
#: is refused from the images' headers, before any is decoded
DEFAULT_MAX_IMAGE_PIXELS = 6000 * 6000
#: the most bytes an OpenAI request body may have (16 images at a few MB each fit)
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
#: the most images one request may carry (each is a base64 string held in memory while the request is checked)
MAX_IMAGES = 16

IMAGE_TOKEN = "<image>"


class RequestError(ValueError):
    """A request the worker refuses; the message names the problem and the fix and goes to the client."""


def require(params: dict, key: str, fix: str):
    if not isinstance(params, dict):
        raise RequestError(f"the request body must be a JSON object with 'prompt', 'stop' and optional 'images'; "
                           f"got {type(params).__name__}")
    if params.get(key) is None:
        raise RequestError(f"the request has no '{key}': {fix}")
    return params[key]


def number(params: dict, key: str, default, kind=float, low=None, high=None):
    """A finite number (`kind` int: a whole one); booleans, NaN and infinities are refused."""
    raw = params.get(key, default)
    try:
        if isinstance(raw, bool):
            raise ValueError("a boolean")
        as_float = float(raw)
        if not math.isfinite(as_float):
            raise ValueError("not finite")
        if kind is int and not as_float.is_integer():
            raise ValueError("not a whole number")
        value = int(raw) if kind is int and isinstance(raw, int) else kind(as_float)
    except (TypeError, ValueError, OverflowError) as exc:
        raise RequestError(f"'{key}' must be a {'finite ' if kind is float else ''}{kind.__name__}, got {raw!r} "
                           f"({exc}): send e.g. '{key}': {default!r}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise RequestError(f"'{key}' = {value!r} is out of range [{low}, {high}]: send a value inside it")
    return value


def check_image_count(prompt: str, images: list, multimodal: bool) -> None:
    n_tokens = prompt.count(IMAGE_TOKEN)
    if n_tokens and not multimodal:  # its id (-200) would reach the embedding: IndexError, a CUDA device assert
        raise RequestError(f"this model has no vision tower (its config has no mm_vision_tower): remove the "
                           f"'{IMAGE_TOKEN}' placeholder(s) from the prompt ({n_tokens} found)")
    if images and not multimodal:
        raise RequestError(f"this model has no vision tower (its config has no mm_vision_tower) but the request "
                           f"carries {len(images)} image(s): send text only")
    if len(images) > MAX_IMAGES:
        raise RequestError(f"the request carries {len(images)} images, more than this worker takes in one request "
                           f"({MAX_IMAGES}): send at most {MAX_IMAGES}")
    if multimodal and n_tokens != len(images):
        raise RequestError(f"the prompt has {n_tokens} '{IMAGE_TOKEN}' placeholder(s) but the request carries "
                           f"{len(images)} image(s): send exactly one '{IMAGE_TOKEN}' per image, in order")


def decode_images(images: list, max_pixels: int) -> list:
    """Base64 strings (optionally data: URLs) -> RGB PIL images. Every image's header is read first; the request
    is refused when its images together have more than `max_pixels` pixels, before any pixel is decoded."""
    opened = [_open(data, i) for i, data in enumerate(images)]
    sizes = [image.size for image, _ in opened]
    total = sum(w * h for w, h in sizes)
    if total > max_pixels:
        each = ", ".join(f"image {i + 1} is {w}x{h}" for i, (w, h) in enumerate(sizes))
        raise RequestError(f"{each}: {total} pixels in all, over this worker's limit of {max_pixels} pixels per "
                           f"request (--max-image-pixels): send a smaller image (resize it) or fewer images")
    return [_load(image, raw, i) for i, (image, raw) in enumerate(opened)]


def _image_error(exc: Exception, index: int, raw: bytes) -> RequestError:
    from PIL import Image

    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return RequestError(f"image {index + 1} is a decompression bomb ({exc}): send a smaller image")
    return RequestError(f"image {index + 1} ({len(raw)} bytes) is not an image Pillow can read ({exc}): send a PNG, "
                        f"JPEG or WebP file's bytes, base64-encoded")


_UNREADABLE = (OSError, SyntaxError, ValueError)  # UnidentifiedImageError is an OSError


def _open(data, index: int):
    """(the image with only its header read, its bytes)."""
    from PIL import Image

    name = f"image {index + 1}"
    if not isinstance(data, str):
        raise RequestError(f"{name} must be a base64 string, got {type(data).__name__}: send the file's bytes "
                           f"base64-encoded")
    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"{name} is not valid base64 ({exc}): send the image file's bytes base64-encoded "
                           f"(standard alphabet, with padding)") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(raw)), raw
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, *_UNREADABLE) as exc:
        raise _image_error(exc, index, raw) from None


def _load(image, raw: bytes, index: int):
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, *_UNREADABLE) as exc:
        raise _image_error(exc, index, raw) from None
