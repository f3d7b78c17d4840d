"""The cloud-only baseline as apps really run it: upload the input as a JPEG.

Sending the float32 model input is not what a phone app does; it sends the camera image
JPEG-compressed, and the cloud decodes and preprocesses it. This measures that baseline on
real images with the model's own compiled library, so bytes, times and accuracy are all
measured, none assumed:

1. each raw RGB image is first brought to the model's input resolution exactly as the
   preprocessing preset does (resize the short side and centre-crop, or nothing for
   CIFAR-10): the phone sends what the model sees, not the full-size photo;
2. that crop is JPEG-encoded as uint8 RGB with Pillow (libjpeg's defaults: 4:2:0 chroma
   subsampling, no optimised Huffman tables) at ``quality``, and decoded again, by the
   wire's ``jpeg`` codec (:mod:`dyno_compile.packing.image_codec`), so this baseline and
   the search's cut-0 JPEG uploads are one JPEG;
3. the decoded pixels get the rest of the preset (scaling and mean/std or mean
   subtraction) and run through the whole model with the artifact's host library
   (:class:`~dyno_compile.runtime.sides.DeviceSide`, the device-only cut);
4. the output is compared with the labels (top-1), and with the same model's output on
   the preset's own preprocessing of the original image (agreement).

Splitting a preset into its geometry and its normalisation is done here; every image is
checked to give exactly the preset's own input when no JPEG is in between, so a preset
that changes cannot silently make the JPEG path see something else.

``encode_s`` and ``decode_s`` time the JPEG encoding of the crop (device) and its decoding
to RGB pixels (cloud), each the mean of one timed run per image on this machine; resizing,
cropping and normalising are left out, since every way of offloading pays them alike.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from dyno_compile.artifact.load import Artifact, load_artifact
from dyno_compile.datasets import cifar10
from dyno_compile.datasets.imagenet import (
    CROP,
    EFFICIENTNET_LITE_CROP,
    EFFICIENTNET_LITE_MEAN,
    EFFICIENTNET_LITE_RESIZE_SHORT,
    EFFICIENTNET_LITE_STD,
    RESIZE_SHORT,
    SQUEEZENET_MEAN_BGR,
    centre_crop,
    load_image,
    load_samples,
    resize_short_side,
    samples_dir,
)
from dyno_compile.datasets.location import data_root
from dyno_compile.errors import InputError
from dyno_compile.packing.image_codec import decode_pixels, encode_pixels
from dyno_compile.runtime.sides import DeviceSide
from dyno_compile.search.calibration import PRESETS

__all__ = ["JpegUpload", "measure_jpeg_upload", "measure_jpeg_uploads", "model_view", "raw_images", "split_of"]

Images = np.ndarray | Sequence[Image.Image | np.ndarray]
"""uint8 [N, H, W, 3] RGB, or a sequence of PIL images or uint8 [H, W, 3] arrays (checked at run time)."""


@dataclass(frozen=True)
class JpegUpload:
    """The JPEG-upload baseline at one quality, measured on ``samples`` images.

    ``bytes``: mean JPEG size; ``encode_s``/``decode_s``: median seconds per image;
    ``accuracy``: top-1 against the labels when ``labelled``, else the agreement with the
    float model; ``agreement``: the share of images whose top-1 class is the one the model
    gives on the original (un-JPEG'd) input; ``float_accuracy``: the model's ``accuracy``
    figure on the original input (1.0 where unlabelled), the figure JPEG is compared with;
    ``input_bytes``: the raw model input it replaces, in the model's input dtype (float32
    for the CIFAR ResNets, float16 for the SqueezeNet ONNX)."""

    quality: int
    bytes: float
    encode_s: float
    decode_s: float
    accuracy: float
    agreement: float
    samples: int
    float_accuracy: float
    labelled: bool
    input_bytes: int


# --- presets split into geometry (before the JPEG) and normalisation (after it) --------------


def _cifar10_geometry(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    if img.size != (size[1], size[0]):
        raise InputError(
            f"preset 'cifar10' does not resize: image is {img.size[0]}x{img.size[1]}, the model "
            f"takes {size[1]}x{size[0]}"
        )
    return img


def _squeezenet_geometry(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    if size != (CROP, CROP):
        raise InputError(f"preset 'squeezenet' makes {CROP}x{CROP} inputs; the model takes {size[1]}x{size[0]}")
    return centre_crop(resize_short_side(img, RESIZE_SHORT), CROP)


def _imagenet_geometry(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    if size[0] != size[1]:
        raise InputError(f"preset 'imagenet' centre-crops a square; the model takes {size[1]}x{size[0]}")
    return centre_crop(resize_short_side(img, round(size[0] * RESIZE_SHORT / CROP)), size[0])


def _efficientnet_lite_geometry(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    if size != (EFFICIENTNET_LITE_CROP, EFFICIENTNET_LITE_CROP):
        raise InputError(
            f"preset 'efficientnet_lite' makes {EFFICIENTNET_LITE_CROP}x{EFFICIENTNET_LITE_CROP} inputs; "
            f"the model takes {size[1]}x{size[0]}"
        )
    return centre_crop(resize_short_side(img, EFFICIENTNET_LITE_RESIZE_SHORT), EFFICIENTNET_LITE_CROP)


def _rgb_mean_std(img: Image.Image) -> np.ndarray:
    return cifar10.preprocess(np.asarray(img)[None])[0]


def _bgr_minus_mean(img: Image.Image) -> np.ndarray:
    bgr = np.asarray(img, dtype=np.float32)[:, :, ::-1] - np.asarray(SQUEEZENET_MEAN_BGR, dtype=np.float32)
    return np.ascontiguousarray(bgr.transpose(2, 0, 1))


def _rgb_minus_127_over_128(img: Image.Image) -> np.ndarray:
    rgb = (np.asarray(img, dtype=np.float32) - np.float32(EFFICIENTNET_LITE_MEAN)) / np.float32(EFFICIENTNET_LITE_STD)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


_Geometry = Callable[[Image.Image, tuple[int, int]], Image.Image]
_Normalise = Callable[[Image.Image], np.ndarray]
#: Preset name -> (geometry to the model's size, normalisation of the model-size pixels).
_SPLIT: dict[str, tuple[_Geometry, _Normalise]] = {
    "cifar10": (_cifar10_geometry, _rgb_mean_std),
    "squeezenet": (_squeezenet_geometry, _bgr_minus_mean),
    "imagenet": (_imagenet_geometry, _rgb_mean_std),
    "efficientnet_lite": (_efficientnet_lite_geometry, _rgb_minus_127_over_128),
}


def split_of(preset: str) -> tuple[_Geometry, _Normalise]:
    """``(geometry, normalise)`` of a preset: ``geometry(img, (H, W))`` makes the uint8 RGB
    crop at the model's resolution (what an app would compress and send) and
    ``normalise(crop)`` the float32 [C, H, W] input from it (what the cloud computes after
    decoding). Shared with the rate–accuracy curves, whose image codecs must see exactly
    this crop."""
    if preset not in PRESETS:
        raise InputError(f"unknown preprocessing preset {preset!r}; known presets: {sorted(PRESETS)}")
    if preset not in _SPLIT:
        raise InputError(
            f"preset {preset!r} has no JPEG-upload split (geometry, then normalisation); known: {sorted(_SPLIT)}"
        )
    return _SPLIT[preset]


def model_view(img: Image.Image, preset: str, size: tuple[int, int]) -> tuple[Image.Image, np.ndarray]:
    """``(crop, x)``: the uint8 RGB image at the model's resolution that the phone would
    JPEG, and the preset's float32 [C, H, W] input for ``img``, checked to be the
    normalisation of that crop."""
    geometry, normalise = split_of(preset)
    img = img.convert("RGB")
    crop = geometry(img, size)
    x = PRESETS[preset][0](img, size)
    if not np.array_equal(normalise(crop), x):
        raise AssertionError(
            f"preset {preset!r} no longer equals its geometry + normalisation split in "
            f"{__name__}; update the split to match the preset"
        )
    return crop, x


# --- real images -----------------------------------------------------------------------------


def raw_images(name: str, limit: int | None = None) -> tuple[list[Image.Image], np.ndarray | None]:
    """Raw RGB images and int64 labels of a shared data set: ``"cifar10"`` (the 932 test
    images, 32x32) or ``"imagenet"`` (the 200 samples, full size, labels in ``labels.tsv``);
    ``limit`` keeps the first ones."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a positive integer or None, got {limit!r}")
    if name == "cifar10":
        path = data_root() / cifar10.TEST_FILE
        x, y = cifar10._read(path)
        cifar10._check(path, x, y)
        return [Image.fromarray(a) for a in x[:limit]], y[:limit].astype(np.int64)
    if name == "imagenet":
        names, labels = load_samples(limit)
        folder = samples_dir()
        return [load_image(folder / n) for n in names], labels
    raise InputError(f"unknown image set {name!r}; known: ['cifar10', 'imagenet']")


def _as_images(images: Images) -> list[Image.Image]:
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise InputError(f"images must be uint8 [N, H, W, 3] RGB, got {images.dtype} {images.shape}")
        return [Image.fromarray(a) for a in images]
    out = []
    for i, img in enumerate(images):
        if isinstance(img, Image.Image):
            out.append(img)
            continue
        a = np.asarray(img)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise InputError(f"image {i} must be a PIL image or uint8 [H, W, 3] RGB, got {a.dtype} {a.shape}")
        out.append(Image.fromarray(a))
    return out


# --- the measurement ---------------------------------------------------------------------------


def _whole_model(artifact: Artifact) -> tuple[DeviceSide, int, tuple[int, int], int]:
    """The device side, its device-only cut, the model's (H, W) and its raw input's bytes."""
    side = DeviceSide(artifact, "host")
    shape = side.input_shape
    if len(shape) != 4 or shape[0] != 1 or shape[1] != 3:
        raise InputError(f"the JPEG baseline needs an RGB image model with input [1, 3, H, W]; this one takes {shape}")
    cuts = artifact.cuts
    whole = [c["position"] for c in cuts if c["kind"] == "device-only"] or [max(c["position"] for c in cuts)]
    return side, whole[0], (shape[2], shape[3]), int(np.prod(shape)) * side.input_dtype.itemsize


def measure_jpeg_uploads(
    artifact: Artifact | str | os.PathLike,
    images: Images,
    labels: Sequence[int] | np.ndarray | None,
    preprocess: str,
    qualities: Sequence[int] = (90,),
    limit: int | None = None,
) -> dict[int, JpegUpload]:
    """:func:`measure_jpeg_upload` at several qualities, sharing the float reference run."""
    if not isinstance(artifact, Artifact):
        artifact = load_artifact(artifact)
    qualities = [_quality(q) for q in qualities]
    if not qualities:
        raise InputError("give at least one JPEG quality")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a positive integer or None, got {limit!r}")
    pictures = _as_images(images)
    y = None
    if labels is not None:
        y = np.asarray(labels)
        if y.ndim != 1 or len(y) != len(pictures) or not np.issubdtype(y.dtype, np.integer):
            raise InputError(
                f"labels must be {len(pictures)} integer class indices (one per image), got {y.dtype} {y.shape}"
            )
        y = y[:limit]
    pictures = pictures[:limit]
    if not pictures:
        raise InputError("no images to measure")
    preset = preprocess
    split_of(preset)
    side, cut, size, input_bytes = _whole_model(artifact)

    def top1(x: np.ndarray) -> int:
        return int(np.argmax(side.finish(side.start(x[None], cut), cut).reshape(-1)))

    reference, crops = [], []
    for img in pictures:
        crop, x = model_view(img, preset, size)
        crops.append(crop)
        reference.append(top1(x))
    ref = np.asarray(reference)
    _, normalise = _SPLIT[preset]
    results = {}
    pixels = [np.asarray(crop) for crop in crops]
    for q in qualities:
        sizes, enc, dec, got = [], [], [], []
        for p in pixels:
            t0 = time.perf_counter()
            data = encode_pixels(p, "jpeg", q)  # the wire's JPEG codec: one definition of its settings
            t1 = time.perf_counter()
            decoded = decode_pixels(data, "jpeg", p.shape[0], p.shape[1], 3)
            t2 = time.perf_counter()
            sizes.append(len(data))
            enc.append(t1 - t0)
            dec.append(t2 - t1)
            got.append(top1(normalise(Image.fromarray(decoded))))
        pred = np.asarray(got)
        agreement = float(np.mean(pred == ref))
        results[q] = JpegUpload(
            quality=q,
            bytes=float(np.mean(sizes)),
            encode_s=float(np.median(enc)),
            decode_s=float(np.median(dec)),
            accuracy=float(np.mean(pred == y)) if y is not None else agreement,
            agreement=agreement,
            samples=len(crops),
            float_accuracy=float(np.mean(ref == y)) if y is not None else 1.0,
            labelled=y is not None,
            input_bytes=input_bytes,
        )
    return results


def measure_jpeg_upload(
    artifact: Artifact | str | os.PathLike,
    images_uint8_hwc: Images,
    labels_or_none: Sequence[int] | np.ndarray | None,
    preprocess: str,
    quality: int = 90,
    limit: int | None = None,
) -> JpegUpload:
    """The JPEG-upload baseline of ``artifact`` on real images (see the module docstring).

    ``images_uint8_hwc``: uint8 [N, H, W, 3] RGB, or a sequence of PIL images or such
    arrays (raw, before any resizing); ``labels_or_none``: their class indices, or None to
    score agreement with the float model; ``preprocess``: the model's preset (as in
    :data:`~dyno_compile.search.calibration.PRESETS`); ``limit``: the first images only.
    """
    return measure_jpeg_uploads(artifact, images_uint8_hwc, labels_or_none, preprocess, (quality,), limit)[
        _quality(quality)
    ]


def _quality(q: object) -> int:
    if isinstance(q, bool) or not isinstance(q, (int, np.integer)) or not 1 <= q <= 100:
        raise InputError(f"JPEG quality must be an integer in 1..100, got {q!r}")
    return int(q)
