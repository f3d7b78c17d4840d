"""What a codec is: the :class:`Codec` table entry and the :class:`PayloadInfo` it is given.

Defined apart from :mod:`.codec`, which holds the table itself, so that a family of codecs
in a module of its own (the image codecs, the entropy coders) can build its entries from
these types and :mod:`.codec` can list them without an import cycle.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class PayloadInfo:
    """What the frame header says about a payload besides its bytes: ``bits``, the code
    width (``None`` for a float passthrough, whose payload is little-endian floats);
    ``shape``, the tensor's dims; ``layout``, how the codes are packed; ``axis``, the channel
    axis of per-channel ranges (``None`` for one range per tensor)."""

    bits: int | None
    shape: tuple[int, ...]
    layout: str
    axis: int | None = None

    @property
    def count(self) -> int:
        return math.prod(self.shape)


def _any_payload(info: PayloadInfo) -> str | None:
    return None


@dataclass(frozen=True)
class Codec:
    """One lossless codec, as configs name it and frames number it.

    ``wire_id`` is the byte a frame header stores (``docs/wire-format.md``); an id is never
    renumbered or reused, so every frame written before still decodes. ``levels`` is the
    inclusive range a config may ask for and ``default_level`` what it gets when it asks
    for none. The functions only ever see a non-empty payload (an empty one is zero bytes
    whatever the codec), with the :class:`PayloadInfo` of the tensor: ``compress(data, level,
    info)``; ``decompress(data, expected_nbytes, info)``, which must allocate at most
    ``expected_nbytes`` (plus what a bounded decoder needs) and raise PackError on a corrupt
    or oversized payload; ``payload_bounds(raw_nbytes, info)``, the ``(least, most)`` bytes a
    genuine payload of that many raw bytes takes, which the decoder checks from the header
    alone, before the checksum and long before any byte reaches the codec. ``accepts(info)``
    says why the codec cannot code such a payload (``None`` when it can), checked on both
    ends; ``lossy`` codecs decode to codes that only approximate the ones sent.
    """

    name: str
    wire_id: int
    levels: tuple[int, int]
    default_level: int
    compress: Callable[[bytes, int, PayloadInfo], bytes]
    decompress: Callable[[bytes | memoryview, int, PayloadInfo], bytes]
    payload_bounds: Callable[[int, PayloadInfo], tuple[int, int]]
    accepts: Callable[[PayloadInfo], str | None] = _any_payload
    lossy: bool = False
