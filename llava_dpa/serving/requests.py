"""Validation of a worker request: every refusal names the problem and the fix (no "NETWORK ERROR")."""
from __future__ import annotations

import base64
import binascii
import io
import warnings

#: the default of the worker's --max-image-pixels: larger images are refused before their pixels are decoded
DEFAULT_MAX_IMAGE_PIXELS = 6000 * 6000

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
    value = params.get(key, default)
    try:
        value = kind(value)
    except (TypeError, ValueError):
        raise RequestError(f"'{key}' must be a {kind.__name__}, got {params.get(key)!r}: send e.g. "
                           f"'{key}': {default!r}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise RequestError(f"'{key}' = {value!r} is out of range [{low}, {high}]: send a value inside it")
    return value


def check_image_count(prompt: str, images: list, multimodal: bool) -> None:
    n_tokens = prompt.count(IMAGE_TOKEN)
    if images and not multimodal:
        raise RequestError(f"this model has no vision tower (its config has no mm_vision_tower) but the request "
                           f"carries {len(images)} image(s): send text only")
    if multimodal and n_tokens != len(images):
        raise RequestError(f"the prompt has {n_tokens} '{IMAGE_TOKEN}' placeholder(s) but the request carries "
                           f"{len(images)} image(s): send exactly one '{IMAGE_TOKEN}' per image, in order")


def decode_image(data, index: int, max_pixels: int):
    """A base64 string (optionally a data: URL) -> an RGB PIL image, refused before decoding its pixels when it
    has more than `max_pixels` pixels."""
    from PIL import Image, UnidentifiedImageError

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
            image = Image.open(io.BytesIO(raw))
            width, height = image.size
            if width * height > max_pixels:
                raise RequestError(f"{name} is {width}x{height} = {width * height} pixels, over this worker's "
                                   f"limit of {max_pixels} (--max-image-pixels): send a smaller image (resize it)")
            image.load()
            return image.convert("RGB")
    except RequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RequestError(f"{name} is a decompression bomb ({exc}): send a smaller image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise RequestError(f"{name} ({len(raw)} bytes) is not an image Pillow can read ({exc}): send a PNG, "
                           f"JPEG or WebP file's bytes, base64-encoded") from None
