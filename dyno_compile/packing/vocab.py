"""The cut vocabulary: every word a cut configuration is spelt in, each defined once.

A configuration says how wide the codes of a crossing tensor are (``bits``: 1..16, or a
float passthrough), how their range is taken (``granularity``), how they are laid out
(``layout``) and how they are compressed (``codec``). The search space, the passes that
insert the cut ops, the IR's cut ops, the compiled kernels, the runtime and the wire all
speak it, so it lives here, in the leaf package every layer may import, and nowhere else.

The wire numbers granularities and layouts by their position in :data:`GRANULARITIES`
and :data:`LAYOUTS`, and codecs by the ``wire_id`` of their :data:`CODEC_TABLE` entry
(``docs/wire-format.md``): these only ever grow at the end, so old frames keep decoding.

Every check raises :class:`PackError` naming the field; a layer that reports bad input in
its own error class (the search's InputError, the passes' GraphError) wraps the call in
:func:`refused_as`, so the rule and its wording stay here.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from dyno_compile.errors import DynoError
from dyno_compile.packing import PackError
from dyno_compile.packing.codec import (
    CODEC_TABLE,
    CODECS,
    Codec,
    check_codec,
    check_level,
    default_level,
    get_codec,
)

__all__ = [
    "CODECS",
    "CODEC_TABLE",
    "FLOAT_MODES",
    "FLOAT_WIDTHS",
    "GRANULARITIES",
    "KERNEL_LAYOUT",
    "LAYOUTS",
    "MAX_BITS",
    "MIN_BITS",
    "MIN_SCALE",
    "Codec",
    "Mode",
    "bits_key",
    "bits_value",
    "check_codec",
    "check_granularity",
    "check_layout",
    "check_level",
    "check_mode",
    "check_width",
    "code_dtype",
    "default_level",
    "get_codec",
    "mode_width",
    "refused_as",
]

#: Integer code widths: ``bits``-bit codes, ``2**bits`` levels.
MIN_BITS, MAX_BITS = 1, 16
#: Float passthrough modes and their width in bits: no range and no packing, the values
#: are cast and sent (NaN and ±Inf included).
FLOAT_WIDTHS: dict[str, int] = {"float32": 32, "float16": 16}
FLOAT_MODES: tuple[str, ...] = tuple(FLOAT_WIDTHS)
#: How many (lo, scale) pairs a tensor gets: one, or one per slice along its channel axis.
GRANULARITIES: tuple[str, ...] = ("tensor", "channel")
#: How packed codes are laid out (:mod:`.bitpack`).
LAYOUTS: tuple[str, ...] = ("stream", "bitplane")
#: The layout compiled pack kernels write and unpack kernels read; the wire may use another.
KERNEL_LAYOUT = LAYOUTS[0]
#: The smallest normal float32. A scale below it has no finite float32 reciprocal (and a
#: flush-to-zero device would see 0), so quantisers use 1 instead: all codes 0, ``x' = lo``.
MIN_SCALE = np.float32(2.0**-126)

#: A width as the packing library and the passes take it: ``8`` or ``"float16"``.
Mode = int | str


def check_width(bits: object, field: str = "bits") -> int:
    """``bits`` as an int in 1..16; PackError otherwise. Bools are refused although they are
    ints: ``bits=True`` is a bug, not 1-bit codes."""
    if not isinstance(bits, (bool, np.bool_)):
        try:
            value = operator.index(bits)  # type: ignore[arg-type]
        except TypeError:
            pass
        else:
            if MIN_BITS <= value <= MAX_BITS:
                return value
    raise PackError(f"must be an int in {MIN_BITS}..{MAX_BITS}, got {bits!r}", field=field)


def check_mode(bits: object, field: str = "bits") -> Mode:
    """``bits`` as an int in 1..16 or one of the float modes; PackError otherwise."""
    if isinstance(bits, str) and bits in FLOAT_MODES:
        return bits
    try:
        return check_width(bits, field)
    except PackError:
        raise PackError(
            f"must be an int in {MIN_BITS}..{MAX_BITS} or one of {FLOAT_MODES}, got {bits!r}", field=field
        ) from None


def bits_value(bits: object, field: str = "bits") -> Mode:
    """A width as the packing library and the passes take it (``8``, ``"float16"``), from
    that or from its spelling in an artifact's cut table or on a command line (``"8"``)."""
    return check_mode(int(bits) if isinstance(bits, str) and bits.isdecimal() else bits, field)


def bits_key(bits: object, field: str = "bits") -> str:
    """A width as an artifact's cut table and a search configuration spell it: ``"8"``, ``"float16"``."""
    return str(bits_value(bits, field))


def mode_width(bits: object) -> int:
    """Bits per element on the wire: the float width of a passthrough mode, else ``bits``."""
    value = bits_value(bits)
    return FLOAT_WIDTHS[value] if isinstance(value, str) else value


def code_dtype(bits: object) -> np.dtype:
    """The dtype of ``bits``-bit codes between quantising and packing: uint8 up to 8 bits,
    uint16 above (the NumPy reference widens to uint16 throughout; the JAX ops and the
    compiled kernels use this, so a kernel's codes and the IR's have one type)."""
    return np.dtype(np.uint8 if check_width(bits) <= 8 else np.uint16)


def check_granularity(granularity: object, field: str = "granularity") -> str:
    if not isinstance(granularity, str) or granularity not in GRANULARITIES:
        raise PackError(f"must be one of {GRANULARITIES}, got {granularity!r}", field=field)
    return granularity


def check_layout(layout: object, field: str = "layout") -> str:
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise PackError(f"must be one of {LAYOUTS}, got {layout!r}", field=field)
    return layout


@contextmanager
def refused_as(error: type[DynoError]) -> Iterator[None]:
    """Re-raise a vocabulary check's PackError as ``error``, worded ``"bits must be ..."``:
    each layer reports bad input in its own error class, under the one rule defined here."""
    try:
        yield
    except PackError as err:
        raise error(f"{err.field} {err.detail}" if err.field else err.detail) from None
