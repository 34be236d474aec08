"""Pixel work shared by every source: decode, colour conversion, resize, channel statistics.

Everything here is plain numpy / Pillow / OpenCV on uint8 H x W x C arrays, so the same code
runs on the driver (array sources) and inside Spark tasks (image folders).
"""
from __future__ import annotations

import io

import numpy as np

# Pillow's names for what an image folder may contain by default (data.extensions widens it);
# content in any other format (a GIF renamed .jpg, ...) is bad input, not silently accepted.
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG")  # MPO: multi-picture JPEG from phone cameras
# Modes that decode to one channel without conversion; colour modes (RGB, RGBA, P, CMYK, ...)
# become 3 channels, dropping alpha (training never uses it) and expanding palettes.
_GRAY_MODES = ("1", "L", "LA", "I;16", "I;16B", "I;16L", "I;16N")
# EXIF orientations that turn the stored image by 90 degrees (width and height swap).
_TRANSPOSED = (5, 6, 7, 8)


class ImageDecodeError(ValueError):
    """One image cannot be used; `kind` is a bad_input reason, the message says why."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def formats_for(extensions: list[str]) -> tuple[str, ...]:
    """Pillow format names for file extensions (.jpg -> JPEG, .bmp -> BMP); ValueError names an
    extension Pillow cannot read."""
    from PIL import Image

    Image.init()
    known = Image.registered_extensions()
    unknown = [e for e in extensions if e.lower() not in known]
    if unknown:
        raise ValueError(f"data.extensions: {', '.join(unknown)} is not an image format Pillow "
                         f"reads; e.g. .jpg, .jpeg, .png, .bmp, .gif, .webp, .tif")
    formats = {known[e.lower()] for e in extensions}
    return tuple(sorted(formats | ({"MPO"} if "JPEG" in formats else set())))


def decode_image(content: bytes, color_mode: str, size: tuple[int, int] | None = None,
                 formats: tuple[str, ...] = ACCEPTED_FORMATS) -> np.ndarray:
    """Encoded image bytes -> uint8 H x W x C, converted per color_mode, resized to size.

    color_mode "keep" returns the file's own channel count (1 or 3); "grayscale" / "rgb"
    convert with Pillow (ITU-R 601-2 luma for grayscale). Content whose format is not in
    `formats` is rejected. Raises ImageDecodeError, also for whatever else a decoder raises on
    malformed content (struct.error, IndexError, cv2.error, ...): kind "corrupt or truncated",
    with the exception's type and message.
    """
    from PIL import Image, UnidentifiedImageError

    from nnfund_spark.data import bad_input

    if not content:
        raise ImageDecodeError(bad_input.EMPTY_FILE, "0 bytes; expected an image")
    try:
        with Image.open(io.BytesIO(content)) as img:
            if img.format not in formats:
                accepted = ", ".join(f for f in formats if f != "MPO")
                raise ImageDecodeError(bad_input.UNSUPPORTED_FORMAT,
                                       f"content is {img.format}; accepted: {accepted}")
            if size is not None and img.format in ("JPEG", "MPO"):
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the target is that much
                # smaller: most of the decode cost of large photos, no visible loss after resize.
                # draft takes (width, height) as stored, i.e. before the EXIF rotation.
                target = (size[1], size[0])
                if _orientation(img) in _TRANSPOSED:
                    target = (size[0], size[1])
                img.draft(img.mode, target)
            img.load()  # decodes now, so truncated files fail here rather than later
            array = _to_array(_upright(img), color_mode)
            if size is not None:
                array = resize(array, size)
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(bad_input.CORRUPT, "not a readable image file") from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(bad_input.TOO_LARGE,
                               f"{exc}; Pillow refuses images above "
                               f"{2 * Image.MAX_IMAGE_PIXELS:,} pixels") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageDecodeError):
            raise
        # Pillow reports truncation as OSError and broken PNG chunks as SyntaxError/ValueError.
        raise ImageDecodeError(bad_input.CORRUPT, f"cannot decode: {exc}") from exc
    except MemoryError:
        raise  # the machine, not the file, is the problem
    except Exception as exc:  # noqa: BLE001 - malformed content can make a decoder raise anything
        raise ImageDecodeError(bad_input.CORRUPT, f"cannot decode: {error_name(exc)}: {exc}"
                               ) from exc
    return array


def error_name(exc: BaseException) -> str:
    """The exception's type as a reader can look it up: TypeError, struct.error, cv2.error."""
    kind = type(exc)
    module = kind.__module__
    return kind.__qualname__ if module in ("builtins", None) else f"{module}.{kind.__qualname__}"


def _orientation(img) -> int:
    return img.getexif().get(0x0112, 1)  # 0x0112: EXIF Orientation; 1 = already upright


def _upright(img):
    """The image as a viewer shows it: cameras store photos as the sensor read them and say
    in the EXIF orientation tag how to turn them."""
    from PIL import ImageOps

    if _orientation(img) != 1:
        return ImageOps.exif_transpose(img)
    return img


def _to_array(img, color_mode: str) -> np.ndarray:
    from PIL import Image

    from nnfund_spark.data import bad_input

    if img.mode.startswith("I;16"):
        # 16-bit grayscale PNG: keep the 8 most significant bits (what a viewer shows), for
        # every color_mode (Pillow's own conversion to 8 bits clips at 255 instead).
        img = Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8))
    if color_mode == "grayscale":
        img = img.convert("L")
    elif color_mode == "rgb":
        img = img.convert("RGB")
    elif img.mode in _GRAY_MODES:
        img = img.convert("L")
    elif img.mode in ("P", "PA") and _gray_palette(img):
        img = img.convert("L")  # a grayscale image stored with a palette is still grayscale
    elif img.mode in ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    else:
        raise ImageDecodeError(bad_input.UNSUPPORTED_FORMAT,
                               f"pixel mode {img.mode} is not 8/16-bit grayscale or colour")
    array = np.asarray(img, dtype=np.uint8)
    return array[..., np.newaxis] if array.ndim == 2 else array


def _gray_palette(img) -> bool:
    """True when every colour the palette image uses has equal red, green and blue."""
    palette = np.asarray(img.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    used = np.unique(np.asarray(img if img.mode == "P" else img.getchannel(0)))
    used = used[used < len(palette)]
    colours = palette[used]
    return bool(len(colours)) and bool(np.all(colours == colours[:, :1]))


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Stretch H x W x C to size (h, w): area averaging when shrinking (no aliasing), bilinear
    when enlarging. The aspect ratio is not kept: every class is treated the same way."""
    import cv2

    height, width = size
    if image.shape[:2] == (height, width):
        return image
    shrinking = height * width < image.shape[0] * image.shape[1]
    out = cv2.resize(image, (width, height),
                     interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return out[..., np.newaxis] if out.ndim == 2 else out


def convert_batch(images: np.ndarray, color_mode: str) -> np.ndarray:
    """Convert a uint8 N x H x W x C batch of an array source to the configured channels."""
    import cv2

    channels = images.shape[-1]
    if color_mode == "keep" or (color_mode == "grayscale") == (channels == 1):
        return images
    n, h, w, _ = images.shape
    # One cv2 call over the stacked batch: rows of all images form one tall image.
    flat = images.reshape(n * h, w, channels)
    code = cv2.COLOR_RGB2GRAY if color_mode == "grayscale" else cv2.COLOR_GRAY2RGB
    out = cv2.cvtColor(flat, code)
    return out.reshape(n, h, w, -1)


def channel_histograms(images: np.ndarray) -> np.ndarray:
    """C x 256 pixel-value counts of a uint8 N x H x W x C batch: exact statistics in O(C*256)
    memory, instead of a float64 copy of the data (1.1 GB for CIFAR-10's training set)."""
    channels = images.shape[-1]
    flat = images.reshape(-1, channels)
    return np.stack([np.bincount(flat[:, c], minlength=256) for c in range(channels)])


def stats_from_histograms(hist: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of pixel/255 from C x 256 counts."""
    values = np.arange(256, dtype=np.float64) / 255.0
    total = hist.sum(axis=1).astype(np.float64)
    total[total == 0] = 1.0
    mean = (hist * values).sum(axis=1) / total
    var = (hist * values ** 2).sum(axis=1) / total - mean ** 2
    return (mean.round(6).tolist(), np.sqrt(np.maximum(var, 0.0)).round(6).tolist())
