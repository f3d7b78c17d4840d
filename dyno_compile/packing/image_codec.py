"""Image codecs as codecs of the frame: JPEG, WebP, AVIF and JPEG XL over an 8-bit C x H x W plane.

Cloud-only (cut 0) sends the model input. Quantised to 8 bits with a range from this input
and laid out as a stream, its codes *are* a planar ``C x H x W`` uint8 image (C = 1 or 3),
so an image codec can code them like any other codec of :data:`~.codec.CODEC_TABLE`: the
device encodes, the cloud decodes from the frame alone (the header's codec byte names the
codec and its dims say what image to expect), and the decoded codes are dequantised with
the header's ranges as usual. These codecs are ``lossy``: the codes the cloud gets only
approximate the ones sent, which is why the search measures their accuracy on decoded
inputs rather than assuming it. ``level`` is the codec's quality, 1..100 for all four (the
one scale the search's quality axis needs), with each library's own default.

Wire ids (``docs/wire-format.md``): ``jpeg`` 3, ``webp`` 4, ``avif`` 5, ``jpegxl`` 6.

Libraries: Pillow for JPEG (libjpeg-turbo; baseline, libjpeg's default 4:2:0 chroma
subsampling, the same JPEG as :mod:`dyno_compile.evaluate.jpeg`'s upload baseline), WebP
(libwebp, lossy) and AVIF (libavif), because ``Image.open`` parses only the header, so the
declared size, mode, frame count and (JPEG) progressiveness are checked against the frame
header *before* a pixel is decoded; ``imagecodecs`` for JPEG XL (Pillow has none), whose
decoder is handed the output array and refuses, from the codestream's basic info and before
decoding, any image of another shape (tested). Both have aarch64 wheels, so a board encodes.

Decoding is written for hostile bytes. Only the named format is tried (``formats=``: a
JPEG codec byte never reaches the PNG or TIFF decoders); the declared dims must be the
header's, the mode must be 8-bit grey or RGB, exactly one frame; a progressive JPEG is
refused (we only write baseline ones, and a hostile progressive file can make libjpeg
re-walk the whole coefficient buffer once per scan, thousands of scans in a small payload);
the payload's length is bounded before the checksum (:func:`_bounds`). Any failure inside a
library becomes a :class:`PackError` on ``payload``; nothing else escapes.

Grey planes (C = 1) go to WebP as RGB (WebP has no grey mode) and come back as one channel.

What the codes are. Cut 0's tensor is the normalised input, ``(pixel / 255 - mean) / std``
per channel (or BGR minus a mean for SqueezeNet, ``(pixel - 127) / 128`` for
EfficientNet-Lite): an increasing affine map of the pixels per channel, so its per-channel
8-bit codes with this input's range are the pixels with each channel's range stretched to
0..255. Measured on 32 real images per preset (cifar10, imagenet, squeezenet,
efficientnet_lite): within half a code of the stretched pixels (the rounding), stretched
1.06-1.21x on average (a photo rarely spans 0..255 in every channel), so an image codec
sees an image with a little more contrast than the photo, and the range needs no care. Neither
does the channel order: SqueezeNet's BGR planes coded as if they were RGB gave JPEGs (q75)
of 10,518 B against 10,526 B with the planes swapped to RGB, and equal mean code errors
(4.32 vs 4.31), so a codec codes the tensor's channels in the tensor's order
(``tests/test_image_codec.py::test_cut_0_codes_are_the_stretched_pixels_in_every_preset``,
slow). Per-tensor ranges (one for all channels) give the pixels with one common stretch.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import imagecodecs
import numpy as np
from PIL import Image

from dyno_compile.packing import PackError
from dyno_compile.packing.codec_types import Codec, PayloadInfo

__all__ = ["IMAGE_CODECS", "QUALITIES", "decode_pixels", "encode_pixels", "image_shape"]

#: The quality scale every image codec takes as its level.
QUALITIES: tuple[int, int] = (1, 100)
#: Channels an image plane may have: grey or RGB.
_CHANNELS = (1, 3)
#: Bounds of a genuine payload: no codestream or container we write is shorter than this
#: (the shortest measured: 44 bytes, a 1-pixel WebP), and none longer than 4x the raw
#: plane plus container overhead (the worst measured: JPEG XL at quality 100 on uniform
#: noise, 3.5x for a 2x300 RGB plane; AVIF's boxes are ~300 bytes on a 1-pixel image).
_LEAST_BYTES = 16
_OVERHEAD_BYTES = 4096
_GROWTH = 4


@dataclass(frozen=True)
class _Format:
    """How one image codec is called: its name in Pillow (``None``: imagecodecs' JPEG XL),
    its default quality and the largest side its format can hold."""

    name: str
    wire_id: int
    pillow: str | None
    default_quality: int
    max_side: int


#: JPEG 75, WebP 80 and AVIF 75 are Pillow's own defaults; JPEG XL 90 is libjxl's default
#: distance 1.0 ("visually lossless") on imagecodecs' quality scale.
_FORMATS = (
    _Format("jpeg", 3, "JPEG", 75, 65_500),
    _Format("webp", 4, "WEBP", 80, 16_383),
    _Format("avif", 5, "AVIF", 75, 32_768),
    _Format("jpegxl", 6, None, 90, 1 << 20),
)
_BY_NAME = {f.name: f for f in _FORMATS}


def image_shape(info: PayloadInfo) -> tuple[int, int, int] | str:
    """``(C, H, W)`` of the image a payload is, or why it is not one: 8-bit codes in the
    stream layout of a ``[1, C, H, W]`` or ``[C, H, W]`` tensor with C in {1, 3}."""
    if info.bits != 8:
        what = "float values" if info.bits is None else f"{info.bits}-bit codes"
        return f"an image codec takes 8-bit codes (an 8-bit image), got {what}"
    if info.layout != "stream":
        return f"an image codec takes codes in the 'stream' layout (one byte per pixel), got {info.layout!r}"
    shape = info.shape
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3 or shape[0] not in _CHANNELS or min(shape[1:]) < 1:
        return f"an image codec takes a [1, C, H, W] or [C, H, W] tensor with C in {_CHANNELS}, got {list(info.shape)}"
    c, h, w = shape
    return c, h, w


def _check_format(codec: str) -> _Format:
    if codec not in _BY_NAME:
        raise PackError(f"must be one of {tuple(_BY_NAME)}, got {codec!r}", field="codec")
    return _BY_NAME[codec]


def _check_quality(quality: object) -> int:
    low, high = QUALITIES
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not low <= quality <= high:
        raise PackError(f"must be an int in {low}..{high}, got {quality!r}", field="level")
    return int(quality)


def encode_pixels(pixels: np.ndarray, codec: str, quality: int) -> bytes:
    """``pixels`` (uint8 ``[H, W]`` grey or ``[H, W, 3]`` RGB) as a ``codec`` image at
    ``quality``: the one place the library settings of each format are chosen."""
    spec, quality = _check_format(codec), _check_quality(quality)
    a = np.ascontiguousarray(pixels)
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)) or 0 in a.shape:
        raise PackError(f"must be uint8 [H, W] or [H, W, 3] pixels, got {a.dtype} {list(a.shape)}", field="pixels")
    if max(a.shape[:2]) > spec.max_side:
        raise PackError(f"{codec} images are at most {spec.max_side} pixels a side, got {list(a.shape)}", field="dims")
    if spec.pillow is None:
        return bytes(imagecodecs.jpegxl_encode(a, level=quality))
    image = Image.fromarray(a)
    if spec.pillow == "WEBP" and a.ndim == 2:
        image = image.convert("RGB")  # WebP has no grey mode
    buf = io.BytesIO()
    image.save(buf, format=spec.pillow, quality=quality)
    return buf.getvalue()


def decode_pixels(data: bytes | memoryview, codec: str, height: int, width: int, channels: int) -> np.ndarray:
    """The uint8 ``[H, W]`` (grey) or ``[H, W, 3]`` pixels of a ``codec`` image that must be
    ``width`` x ``height`` with ``channels`` channels; PackError on anything else, with the
    dims checked before any pixel is decoded (see the module docstring)."""
    spec = _check_format(codec)
    if channels not in _CHANNELS:
        raise PackError(f"must be one of {_CHANNELS}, got {channels!r}", field="channels")
    shape = (height, width) if channels == 1 else (height, width, 3)
    try:
        if spec.pillow is None:
            return _decode_jpegxl(bytes(data), shape)
        return _decode_pillow(bytes(data), spec, shape)
    except PackError:
        raise
    except Exception as err:  # noqa: BLE001 - any library failure on hostile bytes is a bad payload
        raise PackError(f"not a decodable {codec} image ({type(err).__name__}: {err})", field="payload") from None


def _decode_jpegxl(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    if not imagecodecs.jpegxl_check(data):
        raise PackError("not a JPEG XL codestream or container (bad signature)", field="payload")
    out = np.empty(shape, np.uint8)
    try:
        imagecodecs.jpegxl_decode(data, out=out)  # refuses another shape from the basic info, before decoding
    except ValueError as err:
        raise PackError(
            f"JPEG XL image does not match the header's {list(shape)} uint8 ({err})", field="payload"
        ) from None
    return out


def _decode_pillow(data: bytes, spec: _Format, shape: tuple[int, ...]) -> np.ndarray:
    fmt = spec.pillow
    assert fmt is not None, "only Pillow formats come here"
    height, width = shape[:2]
    grey = len(shape) == 2
    modes = ("RGB",) if not grey else ("L", "RGB") if fmt == "WEBP" else ("L",)
    with Image.open(io.BytesIO(data), formats=[fmt]) as image:  # header only: no pixel decoded yet
        if image.format != fmt:
            raise PackError(f"a {image.format} image, not {fmt}", field="payload")
        if image.size != (width, height):
            raise PackError(
                f"{spec.name} image is {image.size[0]}x{image.size[1]}, the header says {width}x{height}",
                field="payload",
            )
        if image.mode not in modes:
            raise PackError(f"{spec.name} image has mode {image.mode!r}, expected one of {modes}", field="payload")
        frames = getattr(image, "n_frames", 1)
        if frames != 1:
            raise PackError(f"{spec.name} image has {frames} frames, expected 1", field="payload")
        if image.info.get("progressive") or image.info.get("progression"):
            raise PackError("progressive JPEG refused: only baseline JPEGs are sent", field="payload")
        image.load()
        pixels = np.asarray(image.convert("L") if grey and image.mode != "L" else image)
    if pixels.shape != shape or pixels.dtype != np.uint8:
        raise PackError(f"decoded {pixels.dtype} {list(pixels.shape)}, expected uint8 {list(shape)}", field="payload")
    return pixels


# --- the codec table entries: planar C x H x W codes <-> interleaved pixels ----------------


def _plane(info: PayloadInfo) -> tuple[int, int, int]:
    shape = image_shape(info)
    if isinstance(shape, str):  # the frame checks accepts() first; a direct call gets the same words
        raise PackError(shape, field="codec")
    return shape


def _planar_to_pixels(data: bytes, c: int, h: int, w: int) -> np.ndarray:
    plane = np.frombuffer(data, np.uint8, count=c * h * w).reshape(c, h, w)
    return plane[0] if c == 1 else plane.transpose(1, 2, 0)


def _make(spec: _Format) -> Codec:
    def compress(data: bytes, level: int, info: PayloadInfo) -> bytes:
        c, h, w = _plane(info)
        if len(data) != c * h * w:
            raise PackError(f"{len(data)} bytes for a {c}x{h}x{w} 8-bit plane", field="payload length")
        return encode_pixels(_planar_to_pixels(data, c, h, w), spec.name, level)

    def decompress(data: bytes | memoryview, expected_nbytes: int, info: PayloadInfo) -> bytes:
        c, h, w = _plane(info)
        if expected_nbytes != c * h * w:
            raise PackError(f"{expected_nbytes} bytes declared for a {c}x{h}x{w} 8-bit plane", field="raw length")
        pixels = decode_pixels(data, spec.name, h, w, c)
        return (pixels if c == 1 else pixels.transpose(2, 0, 1)).tobytes()

    def accepts(info: PayloadInfo) -> str | None:
        shape = image_shape(info)
        if isinstance(shape, str):
            return shape
        if max(shape[1:]) > spec.max_side:
            return f"{spec.name} images are at most {spec.max_side} pixels a side, got {shape[2]}x{shape[1]}"
        return None

    return Codec(
        spec.name, spec.wire_id, QUALITIES, spec.default_quality, compress, decompress, _bounds, accepts, lossy=True
    )


def _bounds(raw_nbytes: int, info: PayloadInfo) -> tuple[int, int]:
    return _LEAST_BYTES, _GROWTH * raw_nbytes + _OVERHEAD_BYTES


#: The image codecs, in wire-id order, for :data:`~.codec.CODEC_TABLE`.
IMAGE_CODECS: tuple[Codec, ...] = tuple(_make(f) for f in _FORMATS)
