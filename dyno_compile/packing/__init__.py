"""DynO's data packing for the tensors crossing a cut, and the wire format that carries them.

A cut tensor is quantised with the range of *this* input (:mod:`.quantize`), its b-bit codes
are packed densely (:mod:`.bitpack`), optionally compressed losslessly (:mod:`.codec`), and
framed with a header that fully describes the payload (:mod:`.frame`). The compiler uses
:func:`encode` to measure bytes per cut and config; the device client encodes, the cloud
server decodes. The words a cut configuration is spelt in (widths, granularities, layouts,
codecs) are defined once, in :mod:`.vocab`, for every layer to import. Everything here is
NumPy, stdlib and the codec libraries only, so both sides can import it without TVM or JAX.

``PackError`` is defined here, before the submodules are imported, because every submodule
raises it: importing any of them loads this file first, so the name already exists.
"""

from __future__ import annotations

from dyno_compile.errors import DynoError


class PackError(DynoError):
    """Data could not be packed or a frame could not be unpacked.

    ``field`` names the frame field or argument at fault (``"magic"``, ``"tensor[1].dims"``,
    ``"bits"``) so a server can log and count rejections by cause without parsing text.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        #: The message without the field, so an outer layer can re-raise it under a longer
        #: field path (``"tensor[1]." + field``).
        self.detail = message
        super().__init__(f"{field}: {message}" if field else message)


from dyno_compile.packing.bitpack import pack, packed_nbytes, unpack  # noqa: E402
from dyno_compile.packing.codec import (  # noqa: E402
    CODEC_TABLE,
    CODECS,
    Codec,
    PayloadInfo,
    compress,
    decompress,
    default_level,
)
from dyno_compile.packing.frame import (  # noqa: E402
    DEFAULT_MAX_BYTES,
    FORMAT_VERSION,
    MAGIC,
    Frame,
    PackConfig,
    PackedFrame,
    PackedTensor,
    TensorHeader,
    decode,
    decode_packed,
    encode,
    encode_packed,
    pack_tensor,
)
from dyno_compile.packing.quantize import QuantParams, dequantize, quantize  # noqa: E402
from dyno_compile.packing.vocab import (  # noqa: E402
    FLOAT_MODES,
    GRANULARITIES,
    KERNEL_LAYOUT,
    LAYOUTS,
    MAX_BITS,
    MIN_BITS,
    MIN_SCALE,
    Mode,
    bits_key,
    bits_value,
    code_dtype,
    mode_width,
    refused_as,
)

__all__ = [
    "CODECS",
    "CODEC_TABLE",
    "DEFAULT_MAX_BYTES",
    "FLOAT_MODES",
    "FORMAT_VERSION",
    "GRANULARITIES",
    "KERNEL_LAYOUT",
    "LAYOUTS",
    "MAGIC",
    "MAX_BITS",
    "MIN_BITS",
    "MIN_SCALE",
    "Codec",
    "Frame",
    "Mode",
    "PackConfig",
    "PackError",
    "PayloadInfo",
    "PackedFrame",
    "PackedTensor",
    "QuantParams",
    "TensorHeader",
    "bits_key",
    "bits_value",
    "code_dtype",
    "compress",
    "decode",
    "decode_packed",
    "decompress",
    "default_level",
    "dequantize",
    "encode",
    "encode_packed",
    "mode_width",
    "pack",
    "pack_tensor",
    "packed_nbytes",
    "quantize",
    "refused_as",
    "unpack",
]
