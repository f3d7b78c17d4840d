"""What every ONNX converter shares: the import context, the decoded node, padding helpers.

The converters (``onnx_elementwise``, ``onnx_layers``, ``onnx_shape_ops`` and the other
``onnx_*`` modules) each take a :class:`Context` and an :class:`OnnxNode` and return the
IR name of the node's output; ``onnx_import`` dispatches to them. Keeping the context and
the ONNX conventions met by several families (``auto_pad``, optional inputs, attribute
decoding) here gives each rule one definition.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from dyno_compile.errors import FrontendError, UnsupportedOpError
from dyno_compile.ir import Graph
from dyno_compile.ir.types import SUPPORTED_DTYPES

__all__ = [
    "Context",
    "Converter",
    "OnnxNode",
    "Pad2d",
    "axes_arg",
    "display_name",
    "normalize_axis",
    "np_dtype",
    "optional_scalar",
    "pair",
    "same_padding",
    "sanitize",
    "spatial_input",
    "window_padding",
]

Pad2d = tuple[tuple[int, int], tuple[int, int]]


# ====================================================================== names and dtypes
def display_name(node: onnx.NodeProto) -> str:
    """ONNX node names are optional (Caffe2 exports leave them empty): fall back to the output."""
    return node.name or (node.output[0] if node.output else node.op_type)


def sanitize(name: str) -> str:
    """An ONNX tensor name as an IR node name: ``fire2/squeeze1x1_1`` -> ``fire2_squeeze1x1_1``."""
    return re.sub(r"[^0-9A-Za-z_.]", "_", name).strip("_") or "t"


def np_dtype(elem_type: int, what: str, source: str) -> str:
    try:
        name = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        name = None
    if name not in SUPPORTED_DTYPES:
        label = (
            onnx.TensorProto.DataType.Name(elem_type) if elem_type in onnx.TensorProto.DataType.values() else elem_type
        )
        raise FrontendError(
            f"{source}: {what} has ONNX element type {label}, which the IR cannot hold; "
            f"supported: {sorted(SUPPORTED_DTYPES)}"
        )
    return name


# ====================================================================== conversion context
@dataclass(frozen=True)
class OnnxNode:
    """The parts of an ONNX ``NodeProto`` a converter needs, attributes decoded to Python."""

    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]

    @classmethod
    def from_proto(cls, proto: onnx.NodeProto) -> OnnxNode:
        attrs = {a.name: _attr_value(a) for a in proto.attribute}
        return cls(proto.op_type, display_name(proto), tuple(proto.input), tuple(proto.output), attrs)

    def has_input(self, i: int) -> bool:
        """ONNX marks an omitted optional input by an empty name."""
        return i < len(self.inputs) and self.inputs[i] != ""

    @property
    def base_name(self) -> str:
        return self.output_name(0)

    def output_name(self, k: int) -> str:
        """IR name for output ``k``: the sanitised ONNX tensor name."""
        if k < len(self.outputs) and self.outputs[k]:
            return sanitize(self.outputs[k])
        return self.op_type.lower() + (f"_{k}" if k else "")


#: The attributes a Constant node may hold its value in (one of them), in the forms we read.
_CONSTANT_KEYS = ("value", "value_float", "value_floats", "value_int", "value_ints")


def constant_value(node: OnnxNode) -> np.ndarray | None:
    """A Constant node's value, or None where it is held in a form not read (sparse, strings)."""
    keys = [k for k in _CONSTANT_KEYS if k in node.attrs]
    if len(keys) != 1:
        return None
    dtype = np.float32 if keys[0].startswith("value_float") else (np.int64 if keys[0] != "value" else None)
    return np.asarray(node.attrs[keys[0]], dtype=dtype)


def _attr_value(attr: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list):
        return [v.decode("utf-8") if isinstance(v, bytes) else v for v in value]
    return value


@dataclass
class Context:
    """State of one import: the graph being built and where each ONNX tensor lives in it."""

    graph: Graph
    source: str
    opset: int
    #: ONNX tensor name -> IR node name.
    tensors: dict[str, str] = field(default_factory=dict)
    #: Values known at import time: initializers, Constant outputs and what shape arithmetic
    #: computes from them and from static shapes (``onnx_fold``). They become const nodes
    #: only where a computation reads them, so the IR holds no shape computations.
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    #: Secondary outputs (Dropout mask, MaxPool indices) the IR does not compute -> producing node.
    unavailable: dict[str, OnnxNode] = field(default_factory=dict)

    def remember_initializers(self, graph: onnx.GraphProto) -> None:
        for init in graph.initializer:
            self.constants[init.name] = numpy_helper.to_array(init)

    def value(self, tensor: str, reader: OnnxNode | None) -> str:
        """IR name of an ONNX tensor, adding the const node of a weight on its first use."""
        if tensor in self.tensors:
            return self.tensors[tensor]
        if tensor in self.constants:
            return self._materialize(tensor)
        where = f"node {reader.name!r} ({reader.op_type})" if reader else "a graph output"
        if tensor in self.unavailable:
            src = self.unavailable[tensor]
            raise UnsupportedOpError(
                src.op_type,
                src.name,
                self.source,
                f"its secondary output {tensor!r} (read by {where}) is not supported",
            )
        raise FrontendError(
            f"{self.source}: {where} reads tensor {tensor!r}, which no earlier node, input "
            "or initializer produces (nodes must be in topological order)"
        )

    def _materialize(self, tensor: str) -> str:
        array = self.constants[tensor]
        if array.dtype.name not in SUPPORTED_DTYPES:
            raise FrontendError(
                f"{self.source}: weight {tensor!r} has dtype {array.dtype.name}, which the IR "
                f"cannot hold; supported: {sorted(SUPPORTED_DTYPES)}"
            )
        self.tensors[tensor] = self.graph.add_const(sanitize(tensor), array).name
        return self.tensors[tensor]

    def input(self, node: OnnxNode, i: int = 0) -> str:
        return self.value(node.inputs[i], node)

    def const_input(self, node: OnnxNode, i: int, what: str) -> np.ndarray:
        """The value of an input that must be known at import time (a shape, axes, a bound)."""
        tensor = node.inputs[i]
        if tensor not in self.constants:
            raise UnsupportedOpError(
                node.op_type,
                node.name,
                self.source,
                f"its {what} (input {i}, {tensor!r}) must be known at import time (an "
                "initializer, a Constant, or shape arithmetic on static shapes); a value "
                "computed at run time is not supported",
            )
        return self.constants[tensor]

    def shape(self, ir_name: str) -> tuple[int, ...]:
        return self.graph.node(ir_name).shape

    def static_shape(self, node: OnnxNode, i: int) -> tuple[int, ...]:
        """Shape of input ``i``, known or computed, without adding a const node for it."""
        tensor = node.inputs[i]
        if tensor in self.constants and tensor not in self.tensors:
            return tuple(self.constants[tensor].shape)
        return self.shape(self.input(node, i))

    def static_dtype(self, node: OnnxNode, i: int) -> str:
        """Dtype of input ``i``, known or computed, without adding a const node for it."""
        tensor = node.inputs[i]
        if tensor in self.constants and tensor not in self.tensors:
            return self.constants[tensor].dtype.name
        return self.dtype(self.input(node, i))

    def dtype(self, ir_name: str) -> str:
        return self.graph.node(ir_name).dtype

    def add(
        self,
        op: str,
        inputs: Sequence[str],
        attrs: Mapping[str, Any] | None,
        node: OnnxNode,
        suffix: str = "",
        *,
        output: int = 0,
    ) -> str:
        """Add an IR node named after the ONNX node's output number ``output`` (plus
        ``suffix`` for helper nodes)."""
        name = node.output_name(output) + (f"_{suffix}" if suffix else "")
        return self.graph.add(op, inputs, attrs, name=name).name

    def scalar(self, value: float, dtype: str, node: OnnxNode, suffix: str) -> str:
        """A rank-0 const in ``dtype`` (alpha, beta of HardSigmoid and Gemm)."""
        name = f"{node.base_name}_{suffix}"
        return self.graph.add_const(name, np.asarray(value, dtype=dtype)).name

    def unsupported(self, node: OnnxNode, hint: str) -> UnsupportedOpError:
        return UnsupportedOpError(node.op_type, node.name, self.source, hint)


#: A converter returns the IR name of the node's output, a tuple of names for nodes with
#: several outputs (Split), or None when it bound its outputs itself (a Constant's value).
Converter = Callable[[Context, OnnxNode], "str | tuple[str, ...] | None"]


def axes_arg(ctx: Context, node: OnnxNode, i: int, rank: int) -> tuple[int, ...] | None:
    """Axes from input ``i`` (Squeeze/Unsqueeze/Split from opset 13, ReduceX from 18) or from
    the ``axes`` attribute (earlier opsets), made non-negative for ``rank``; None if neither."""
    if node.has_input(i):
        raw = ctx.const_input(node, i, "axes").reshape(-1).tolist()
    elif "axes" in node.attrs:
        raw = node.attrs["axes"]
    else:
        return None
    return tuple(normalize_axis(int(a), rank) for a in raw)


def normalize_axis(axis: int, rank: int) -> int:
    """``axis`` counted from the front; one out of ``[-rank, rank)`` is an error, not a wrap."""
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for a rank-{rank} tensor")
    return axis % rank


def optional_scalar(ctx: Context, node: OnnxNode, i: int, what: str) -> float | None:
    if not node.has_input(i):
        return None
    return float(ctx.const_input(node, i, what).reshape(()))


# ====================================================================== windows and padding
def spatial_input(ctx: Context, node: OnnxNode) -> str:
    x = ctx.input(node)
    if len(ctx.shape(x)) != 4:
        raise ctx.unsupported(node, f"only 2-D spatial inputs (rank 4, NCHW) are supported, got shape {ctx.shape(x)}")
    return x


def pair(values: Sequence[int] | None, default: int) -> tuple[int, int]:
    return (int(values[0]), int(values[1])) if values else (default, default)


def window_padding(
    node: OnnxNode, in_hw: Sequence[int], kernel: tuple[int, int], strides: tuple[int, int], dilation: tuple[int, int]
) -> Pad2d:
    """ONNX ``auto_pad``/``pads`` as the IR's explicit ``((top, bottom), (left, right))``."""
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return tuple(
            same_padding(n, k, s, d, upper=auto_pad == "SAME_UPPER")  # type: ignore[return-value]
            for n, k, s, d in zip(in_hw, kernel, strides, dilation)
        )
    if auto_pad == "VALID":
        return ((0, 0), (0, 0))
    if auto_pad != "NOTSET":
        raise ValueError(f"unknown auto_pad {auto_pad!r}")
    pads = [int(p) for p in node.attrs.get("pads", (0, 0, 0, 0))]
    return ((pads[0], pads[2]), (pads[1], pads[3]))


def same_padding(size: int, kernel: int, stride: int, dilation: int, *, upper: bool) -> tuple[int, int]:
    """Pad so that the output has ``ceil(size / stride)`` elements; the odd one goes last if ``upper``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    small = total // 2
    return (small, total - small) if upper else (total - small, small)
