"""Operator definitions. Importing this package registers every built-in op."""

from dyno_compile.ir.ops import elementwise, nn, quant, spatial, tensor  # noqa: F401  (registration side effect)
from dyno_compile.ir.ops.layout import DEFAULT_CHANNEL_AXIS, channel_axis, spatial_axes
from dyno_compile.ir.ops.registry import REQUIRED, OpDef, get_op, infer_type, register_op, registered_ops

__all__ = [
    "DEFAULT_CHANNEL_AXIS",
    "REQUIRED",
    "OpDef",
    "channel_axis",
    "get_op",
    "infer_type",
    "register_op",
    "registered_ops",
    "spatial_axes",
]
