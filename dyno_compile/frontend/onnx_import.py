"""Import an ONNX model (a ``.onnx`` file or an ``onnx.ModelProto``) into the graph IR.

Each ONNX operator maps, through the dispatch table ``CONVERTERS``, to one small function
that emits IR nodes; ONNX conventions that the IR states differently (``auto_pad``,
``ceil_mode``, Gemm's ``transB``, opset-12 Softmax) are lowered to the IR's explicit form
here, so that no later stage needs to know about them.

Guarantees:

* nothing partial: any problem raises ``FrontendError`` (``UnsupportedOpError`` for an
  operator without translation), naming the file and the node;
* weights keep their stored dtype (a float16 model imports as a float16 graph);
* initializers become ``const`` nodes only where a computation reads them, so a Reshape's
  target shape never shows up as a weight; IR-version-3 files, which also list weights as
  graph inputs, therefore import with only the real inputs;
* IR node names are the sanitised names of the ONNX tensors they produce, so a user can
  find ``fire9/concat_1`` as ``fire9_concat_1``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from dyno_compile.errors import FrontendError, GraphError, UnsupportedOpError
from dyno_compile.ir import Graph
from dyno_compile.ir.types import SUPPORTED_DTYPES

__all__ = ["CONVERTERS", "from_onnx", "supported_ops"]

Pad2d = tuple[tuple[int, int], tuple[int, int]]
_DEFAULT_DOMAINS = ("", "ai.onnx")


# ====================================================================== public entry point
def from_onnx(
    path_or_model: str | PathLike[str] | onnx.ModelProto,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    name: str | None = None,
) -> Graph:
    """Build a ``Graph`` equal in meaning to the ONNX model.

    ``input_shapes`` gives the shape of inputs by ONNX name; it is required for inputs with
    symbolic dimensions (``dim_param``) and may also override a fixed one (a batch of N
    through a model exported with batch 1). ``name`` names the graph (default: the file's
    stem, else the ONNX graph's name).
    """
    model, source = _load(path_or_model)
    _check(model, source)
    _refuse_unsupported(model.graph, source)
    ctx = _Context(Graph(name or _default_name(path_or_model, model)), source, _opset(model, source))
    ctx.remember_initializers(model.graph)
    _add_inputs(ctx, model.graph, dict(input_shapes or {}))
    for proto in model.graph.node:
        _convert(ctx, OnnxNode.from_proto(proto))
    ctx.graph.set_outputs([ctx.value(o.name, None) for o in model.graph.output])
    return ctx.graph


def supported_ops() -> list[str]:
    """ONNX operator types (default domain) that ``from_onnx`` translates."""
    return sorted(CONVERTERS)


# ====================================================================== loading and checks
def _load(path_or_model: str | PathLike[str] | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Read the model; turn every way a file can be bad into one FrontendError naming it."""
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model, f"<ONNX model {path_or_model.graph.name or 'unnamed'}>"
    path = Path(path_or_model)
    if not path.is_file():
        raise FrontendError(f"ONNX file {str(path)!r} does not exist (or is not a file)")
    try:
        return onnx.load(str(path)), path.name
    except (DecodeError, OSError, ValueError) as exc:
        raise FrontendError(
            f"{path.name}: cannot parse the ONNX model; the file is truncated or corrupt ({type(exc).__name__}: {exc})"
        ) from exc


def _check(model: onnx.ModelProto, source: str) -> None:
    """Refuse what parses but is no model: a file cut at a top-level field boundary parses.

    Deliberately not ``onnx.checker.check_model``: it refuses models that ONNX Runtime runs
    (graph outputs declared without a shape, for one). Dangling tensor names and missing
    attributes are caught node by node during conversion.
    """
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise FrontendError(
            f"{source}: not an ONNX model (no IR version or no graph); the file is truncated or corrupt"
        )
    if not model.graph.output:
        raise FrontendError(f"{source}: the ONNX graph declares no outputs")
    if model.graph.sparse_initializer:
        raise FrontendError(f"{source}: sparse initializers are not supported; densify them first")


def _opset(model: onnx.ModelProto, source: str) -> int:
    for entry in model.opset_import:
        if entry.domain in _DEFAULT_DOMAINS:
            return int(entry.version)
    raise FrontendError(
        f"{source}: the model imports no version of the default ONNX operator set (truncated or corrupt file?)"
    )


def _refuse_unsupported(graph: onnx.GraphProto, source: str) -> None:
    """Fail before building anything, naming the first unsupported node and all missing ops."""
    bad = [n for n in graph.node if n.domain not in _DEFAULT_DOMAINS or n.op_type not in CONVERTERS]
    if not bad:
        return
    ops = sorted({_qualified_op(n) for n in bad})
    hint = f"this model uses {len(ops)} unsupported operator type(s): {', '.join(ops)}" if len(ops) > 1 else ""
    first = bad[0]
    raise UnsupportedOpError(_qualified_op(first), _display_name(first), source, hint)


def _qualified_op(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"


def _display_name(node: onnx.NodeProto) -> str:
    """ONNX node names are optional (Caffe2 exports leave them empty): fall back to the output."""
    return node.name or (node.output[0] if node.output else node.op_type)


def _default_name(path_or_model: object, model: onnx.ModelProto) -> str:
    if isinstance(path_or_model, (str, PathLike)):
        return Path(path_or_model).stem
    return model.graph.name or "onnx_model"


def sanitize(name: str) -> str:
    """An ONNX tensor name as an IR node name: ``fire2/squeeze1x1_1`` -> ``fire2_squeeze1x1_1``."""
    return re.sub(r"[^0-9A-Za-z_.]", "_", name).strip("_") or "t"


# ====================================================================== graph inputs
def _add_inputs(ctx: _Context, graph: onnx.GraphProto, shapes: dict[str, Sequence[int]]) -> None:
    """Add graph inputs; those that are also initializers (IR version 3) are weights."""
    real = [i for i in graph.input if i.name not in ctx.constants]
    unknown = set(shapes) - {i.name for i in real}
    if unknown:
        names = ", ".join(repr(i.name) for i in real)
        raise FrontendError(
            f"{ctx.source}: input_shapes names {sorted(unknown)}, which are not inputs "
            f"of the model; its inputs are {names}"
        )
    for info in real:
        shape = _input_shape(info, shapes.get(info.name), ctx.source)
        dtype = _np_dtype(info.type.tensor_type.elem_type, f"input {info.name!r}", ctx.source)
        ctx.tensors[info.name] = ctx.graph.add_input(sanitize(info.name), shape, dtype).name


def _input_shape(info: onnx.ValueInfoProto, given: Sequence[int] | None, source: str) -> tuple[int, ...]:
    """The declared static shape, or ``given``; symbolic dims without ``given`` are an error."""
    if not info.type.HasField("tensor_type"):
        raise FrontendError(f"{source}: input {info.name!r} is not a tensor")
    tt = info.type.tensor_type
    declared = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
    if given is not None:
        given = tuple(int(d) for d in given)
        if tt.HasField("shape") and len(given) != len(declared):
            raise FrontendError(
                f"{source}: input_shapes[{info.name!r}] = {given} has rank {len(given)}, "
                f"but the model declares {declared} (rank {len(declared)})"
            )
        return given
    if not tt.HasField("shape"):
        raise FrontendError(
            f"{source}: input {info.name!r} has no declared shape; pass input_shapes={{{info.name!r}: (...)}}"
        )
    if any(isinstance(d, str) for d in declared):
        raise FrontendError(
            f"{source}: input {info.name!r} has dynamic dimensions {declared}; the IR needs "
            f"static shapes, so pass input_shapes={{{info.name!r}: (...)}} to fix them"
        )
    return tuple(int(d) for d in declared)  # all dim_values: symbolic dims were refused above


def _np_dtype(elem_type: int, what: str, source: str) -> str:
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
        return cls(proto.op_type, _display_name(proto), tuple(proto.input), tuple(proto.output), attrs)

    def has_input(self, i: int) -> bool:
        """ONNX marks an omitted optional input by an empty name."""
        return i < len(self.inputs) and self.inputs[i] != ""

    @property
    def base_name(self) -> str:
        return sanitize(self.outputs[0]) if self.outputs and self.outputs[0] else self.op_type.lower()


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
class _Context:
    """State of one import: the graph being built and where each ONNX tensor lives in it."""

    graph: Graph
    source: str
    opset: int
    #: ONNX tensor name -> IR node name.
    tensors: dict[str, str] = field(default_factory=dict)
    #: Values of initializers and Constant outputs, added to the graph on first use.
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
                f"its {what} (input {i}, {tensor!r}) must be a constant (initializer or "
                "Constant node); computed values are not supported",
            )
        return self.constants[tensor]

    def shape(self, ir_name: str) -> tuple[int, ...]:
        return self.graph.node(ir_name).shape

    def dtype(self, ir_name: str) -> str:
        return self.graph.node(ir_name).dtype

    def add(
        self, op: str, inputs: Sequence[str], attrs: Mapping[str, Any] | None, node: OnnxNode, suffix: str = ""
    ) -> str:
        """Add an IR node named after the ONNX node's output (plus ``suffix`` for helper nodes)."""
        name = node.base_name + (f"_{suffix}" if suffix else "")
        return self.graph.add(op, inputs, attrs, name=name).name

    def scalar(self, value: float, dtype: str, node: OnnxNode, suffix: str) -> str:
        """A rank-0 const in ``dtype`` (alpha, beta of HardSigmoid and Gemm)."""
        name = f"{node.base_name}_{suffix}"
        return self.graph.add_const(name, np.asarray(value, dtype=dtype)).name

    def unsupported(self, node: OnnxNode, hint: str) -> UnsupportedOpError:
        return UnsupportedOpError(node.op_type, node.name, self.source, hint)


def _convert(ctx: _Context, node: OnnxNode) -> None:
    """Run the node's converter and record where its outputs live; errors name the node."""
    try:
        result = CONVERTERS[node.op_type](ctx, node)
    except (GraphError, ValueError) as exc:
        raise FrontendError(f"{ctx.source}: node {node.name!r} ({node.op_type}) cannot be translated: {exc}") from exc
    except KeyError as exc:
        raise FrontendError(
            f"{ctx.source}: node {node.name!r} ({node.op_type}) lacks the required attribute {exc}"
        ) from exc
    if result is None:  # the converter bound its outputs itself (Constant)
        return
    ctx.tensors[node.outputs[0]] = result
    for extra in node.outputs[1:]:
        if extra:
            ctx.unavailable[extra] = node


Converter = Callable[[_Context, OnnxNode], "str | None"]


# ====================================================================== elementwise
def _unary(ir_op: str, ctx: _Context, node: OnnxNode) -> str:
    return ctx.add(ir_op, [ctx.input(node)], None, node)


def _binary(ir_op: str, ctx: _Context, node: OnnxNode) -> str:
    a, b = ctx.input(node, 0), ctx.input(node, 1)
    if ir_op == "div" and not np.issubdtype(np.dtype(ctx.dtype(a)), np.floating):
        raise ctx.unsupported(node, "integer division is not supported (the IR's div is true division)")
    if ctx.opset < 7 and node.attrs.get("broadcast", 0) and "axis" in node.attrs:
        b = _legacy_broadcast(ctx, node, a, b)
    return ctx.add(ir_op, [a, b], None, node)


def _legacy_broadcast(ctx: _Context, node: OnnxNode, a: str, b: str) -> str:
    """Opset < 7 aligned ``b`` at ``axis`` of ``a``; NumPy rules align trailing dims, so pad with 1s."""
    rank_a, shape_b = len(ctx.shape(a)), ctx.shape(b)
    axis = node.attrs["axis"] % rank_a
    trailing = rank_a - axis - len(shape_b)
    if trailing <= 0:
        return b
    return ctx.add("reshape", [b], {"shape": shape_b + (1,) * trailing}, node, "b_aligned")


def _variadic(ir_op: str, ctx: _Context, node: OnnxNode) -> str:
    """Max/Min of N inputs as a chain of binary ops; the last one carries the node's name."""
    names = [ctx.value(t, node) for t in node.inputs if t]
    if len(names) == 1:
        return ctx.add("identity", names, None, node)
    acc = names[0]
    for k, other in enumerate(names[1:], start=1):
        acc = ctx.add(ir_op, [acc, other], None, node, "" if k == len(names) - 1 else f"part{k}")
    return acc


def _clip(ctx: _Context, node: OnnxNode) -> str:
    """Bounds are attributes before opset 11 and optional constant inputs from opset 11 on."""
    if ctx.opset < 11:
        lo, hi = node.attrs.get("min"), node.attrs.get("max")
    else:
        lo = _optional_scalar(ctx, node, 1, "min")
        hi = _optional_scalar(ctx, node, 2, "max")
    return ctx.add("clip", [ctx.input(node)], {"min": lo, "max": hi}, node)


def _optional_scalar(ctx: _Context, node: OnnxNode, i: int, what: str) -> float | None:
    if not node.has_input(i):
        return None
    return float(ctx.const_input(node, i, what).reshape(()))


def _hard_sigmoid(ctx: _Context, node: OnnxNode) -> str:
    """``max(0, min(1, alpha*x + beta))``; the IR's hardsigmoid is the alpha=1/6, beta=1/2 case."""
    alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
    x = ctx.input(node)
    if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and math.isclose(beta, 0.5, rel_tol=1e-6):
        return ctx.add("hardsigmoid", [x], None, node)
    scaled = ctx.add("mul", [x, ctx.scalar(alpha, ctx.dtype(x), node, "alpha")], None, node, "scaled")
    shifted = ctx.add("add", [scaled, ctx.scalar(beta, ctx.dtype(x), node, "beta")], None, node, "shifted")
    return ctx.add("clip", [shifted], {"min": 0.0, "max": 1.0}, node)


def _cast(ctx: _Context, node: OnnxNode) -> str:
    dtype = _np_dtype(node.attrs["to"], f"Cast node {node.name!r}", ctx.source)
    return ctx.add("cast", [ctx.input(node)], {"dtype": dtype}, node)


def _identity(ctx: _Context, node: OnnxNode) -> str:
    """No IR node: readers of the output read the input (Identity, inference-time Dropout)."""
    return ctx.input(node)


def _dropout(ctx: _Context, node: OnnxNode) -> str:
    if node.has_input(2) and bool(ctx.const_input(node, 2, "training_mode").reshape(())):
        raise ctx.unsupported(node, "Dropout in training mode is not supported")
    return _identity(ctx, node)


def _constant(ctx: _Context, node: OnnxNode) -> None:
    """Keep the value aside like an initializer; it becomes a const node only if read as a tensor."""
    keys = [k for k in ("value", "value_float", "value_floats", "value_int", "value_ints") if k in node.attrs]
    if len(keys) != 1:
        raise ctx.unsupported(node, f"only value/value_float(s)/value_int(s) are supported, got {sorted(node.attrs)}")
    raw = node.attrs[keys[0]]
    dtype = np.float32 if keys[0].startswith("value_float") else (np.int64 if keys[0] != "value" else None)
    ctx.constants[node.outputs[0]] = np.asarray(raw, dtype=dtype)
    return None


# ====================================================================== convolution and pooling
def _spatial_input(ctx: _Context, node: OnnxNode) -> str:
    x = ctx.input(node)
    if len(ctx.shape(x)) != 4:
        raise ctx.unsupported(node, f"only 2-D spatial inputs (rank 4, NCHW) are supported, got shape {ctx.shape(x)}")
    return x


def _pair(values: Sequence[int] | None, default: int) -> tuple[int, int]:
    return (int(values[0]), int(values[1])) if values else (default, default)


def _window_padding(
    node: OnnxNode, in_hw: Sequence[int], kernel: tuple[int, int], strides: tuple[int, int], dilation: tuple[int, int]
) -> Pad2d:
    """ONNX ``auto_pad``/``pads`` as the IR's explicit ``((top, bottom), (left, right))``."""
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return tuple(
            _same_padding(n, k, s, d, upper=auto_pad == "SAME_UPPER")  # type: ignore[return-value]
            for n, k, s, d in zip(in_hw, kernel, strides, dilation)
        )
    if auto_pad == "VALID":
        return ((0, 0), (0, 0))
    if auto_pad != "NOTSET":
        raise ValueError(f"unknown auto_pad {auto_pad!r}")
    pads = [int(p) for p in node.attrs.get("pads", (0, 0, 0, 0))]
    return ((pads[0], pads[2]), (pads[1], pads[3]))


def _same_padding(size: int, kernel: int, stride: int, dilation: int, *, upper: bool) -> tuple[int, int]:
    """Pad so that the output has ``ceil(size / stride)`` elements; the odd one goes last if ``upper``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def _ceil_extra(size: int, pad: tuple[int, int], kernel: int, stride: int, dilation: int) -> int:
    """Padding to add at the end so that floor-mode pooling gives ONNX's ``ceil_mode`` output size.

    ONNX (like PyTorch) drops a last window that would start in the end padding.
    """
    span = (kernel - 1) * dilation + 1
    padded = size + pad[0] + pad[1]
    out = -(-(padded - span) // stride) + 1
    if (out - 1) * stride >= size + pad[0]:
        out -= 1
    return max((out - 1) * stride + span - padded, 0)


@dataclass(frozen=True)
class _Window:
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    padding: Pad2d
    #: Extra bottom/right padding that emulates ``ceil_mode`` (zero when it is off).
    ceil_pad: tuple[int, int]


def _pool_window(ctx: _Context, node: OnnxNode, x: str) -> _Window:
    kernel = _pair(node.attrs.get("kernel_shape"), 1)
    strides = _pair(node.attrs.get("strides"), 1)
    dilation = _pair(node.attrs.get("dilations"), 1)
    in_hw = ctx.shape(x)[2:]
    padding = _window_padding(node, in_hw, kernel, strides, dilation)
    ceil_pad = (0, 0)
    if node.attrs.get("ceil_mode", 0) and node.attrs.get("auto_pad", "NOTSET") == "NOTSET":
        ceil_h, ceil_w = (_ceil_extra(*args) for args in zip(in_hw, padding, kernel, strides, dilation))
        ceil_pad = (ceil_h, ceil_w)
    return _Window(kernel, strides, dilation, padding, ceil_pad)


def _with_ceil(padding: Pad2d, ceil_pad: tuple[int, int]) -> Pad2d:
    (t, b), (l, r) = padding
    return ((t, b + ceil_pad[0]), (l, r + ceil_pad[1]))


def _conv(ctx: _Context, node: OnnxNode) -> str:
    x = _spatial_input(ctx, node)
    w = ctx.input(node, 1)
    kernel = _pair(node.attrs.get("kernel_shape") or ctx.shape(w)[2:], 1)
    strides = _pair(node.attrs.get("strides"), 1)
    dilation = _pair(node.attrs.get("dilations"), 1)
    padding = _window_padding(node, ctx.shape(x)[2:], kernel, strides, dilation)
    inputs = [x, w] + ([ctx.input(node, 2)] if node.has_input(2) else [])
    attrs = {"strides": strides, "padding": padding, "dilation": dilation, "groups": int(node.attrs.get("group", 1))}
    return ctx.add("conv2d", inputs, attrs, node)


def _max_pool(ctx: _Context, node: OnnxNode) -> str:
    x = _spatial_input(ctx, node)
    win = _pool_window(ctx, node, x)
    attrs = {
        "kernel": win.kernel,
        "strides": win.strides,
        "dilation": win.dilation,
        "padding": _with_ceil(win.padding, win.ceil_pad),
    }
    return ctx.add("max_pool2d", [x], attrs, node)


def _average_pool(ctx: _Context, node: OnnxNode) -> str:
    """With ``count_include_pad`` the explicit pads count in the divisor but ceil-mode overhang does not.

    The IR's ``count_include_pad`` counts all padding, so when both apply the explicit pads
    become a real ``pad`` node of zeros and the pool counts only what it reads.
    """
    x = _spatial_input(ctx, node)
    win = _pool_window(ctx, node, x)
    attrs = {"kernel": win.kernel, "strides": win.strides, "dilation": win.dilation}
    include_pad = bool(node.attrs.get("count_include_pad", 0))
    has_pad = any(p for side in win.padding for p in side)
    if include_pad and has_pad and any(win.ceil_pad):
        x = ctx.add("pad", [x], {"pads": ((0, 0), (0, 0)) + win.padding}, node, "padded")
        return ctx.add(
            "avg_pool2d",
            [x],
            {**attrs, "padding": _with_ceil(((0, 0), (0, 0)), win.ceil_pad), "count_include_pad": False},
            node,
        )
    return ctx.add(
        "avg_pool2d",
        [x],
        {**attrs, "padding": _with_ceil(win.padding, win.ceil_pad), "count_include_pad": include_pad and has_pad},
        node,
    )


def _global_pool(ir_reduce: str, ctx: _Context, node: OnnxNode) -> str:
    x = ctx.input(node)
    rank = len(ctx.shape(x))
    if ir_reduce == "reduce_mean" and rank == 4:
        return ctx.add("global_avg_pool2d", [x], {"keepdims": True}, node)
    return ctx.add(ir_reduce, [x], {"axes": tuple(range(2, rank)), "keepdims": True}, node)


# ====================================================================== dense layers and normalisation
def _batch_norm(ctx: _Context, node: OnnxNode) -> str:
    if node.attrs.get("training_mode", 0):
        raise ctx.unsupported(node, "BatchNormalization in training mode is not supported")
    inputs = [ctx.input(node, i) for i in range(5)]
    return ctx.add("batch_norm", inputs, {"epsilon": float(node.attrs.get("epsilon", 1e-5)), "axis": 1}, node)


def _gemm(ctx: _Context, node: OnnxNode) -> str:
    """``alpha * A' @ B' + beta * C``; the IR's dense wants the weight as [out, in], i.e. B' transposed."""
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    a = ctx.input(node, 0)
    if node.attrs.get("transA", 0):
        a = ctx.add("transpose", [a], {"perm": (1, 0)}, node, "a_t")
    w = ctx.input(node, 1)
    if not node.attrs.get("transB", 0):
        w = ctx.add("transpose", [w], {"perm": (1, 0)}, node, "w_t")
    c = ctx.input(node, 2) if node.has_input(2) else None
    fuse_bias = c is not None and alpha == 1.0 and beta == 1.0 and ctx.shape(c) == ctx.shape(w)[:1]
    need_scale = alpha != 1.0
    add_c = None if fuse_bias else c  # C when it is added after the matmul rather than fused into dense
    y = ctx.add(
        "dense",
        [a, w] + ([c] if fuse_bias and c is not None else []),
        None,
        node,
        "matmul" if (need_scale or add_c is not None) else "",
    )
    if need_scale:
        y = ctx.add(
            "mul",
            [y, ctx.scalar(alpha, ctx.dtype(y), node, "alpha")],
            None,
            node,
            "scaled" if add_c is not None else "",
        )
    if add_c is not None:
        if beta != 1.0:
            add_c = ctx.add("mul", [add_c, ctx.scalar(beta, ctx.dtype(add_c), node, "beta")], None, node, "bias")
        y = ctx.add("add", [y, add_c], None, node)
    return y


def _matmul(ctx: _Context, node: OnnxNode) -> str:
    """``A @ W`` with W a constant matrix [in, out] is a dense layer on W transposed."""
    if node.inputs[1] not in ctx.constants or ctx.constants[node.inputs[1]].ndim != 2:
        raise ctx.unsupported(node, "MatMul is supported only with a constant 2-D right operand (a weight)")
    w = ctx.add("transpose", [ctx.input(node, 1)], {"perm": (1, 0)}, node, "w_t")
    return ctx.add("dense", [ctx.input(node, 0), w], None, node)


def _softmax(ctx: _Context, node: OnnxNode) -> str:
    """Before opset 13 Softmax flattens to 2-D at ``axis`` and normalises each row.

    That equals a softmax over ``axis`` alone when every later dimension is 1 (SqueezeNet's
    [1, 1000, 1, 1]); otherwise it is reshape -> softmax -> reshape.
    """
    x = ctx.input(node)
    shape = ctx.shape(x)
    axis = int(node.attrs.get("axis", 1 if ctx.opset < 13 else -1)) % len(shape)
    if ctx.opset >= 13 or all(d == 1 for d in shape[axis + 1 :]):
        return ctx.add("softmax", [x], {"axis": axis}, node)
    rows = ctx.add("reshape", [x], {"shape": (math.prod(shape[:axis]), math.prod(shape[axis:]))}, node, "rows")
    normed = ctx.add("softmax", [rows], {"axis": 1}, node, "rows_softmax")
    return ctx.add("reshape", [normed], {"shape": shape}, node)


# ====================================================================== shapes and data movement
def _concat(ctx: _Context, node: OnnxNode) -> str:
    inputs = [ctx.value(t, node) for t in node.inputs if t]
    axis = int(node.attrs.get("axis", 1)) % len(ctx.shape(inputs[0]))
    return ctx.add("concat", inputs, {"axis": axis}, node)


def _flatten(ctx: _Context, node: OnnxNode) -> str:
    x = ctx.input(node)
    axis = int(node.attrs.get("axis", 1))
    return ctx.add("flatten", [x], {"axis": axis % len(ctx.shape(x)) if axis < 0 else axis}, node)


def _reshape(ctx: _Context, node: OnnxNode) -> str:
    x = ctx.input(node)
    target = node.attrs["shape"] if ctx.opset < 5 else ctx.const_input(node, 1, "target shape").tolist()
    shape = resolve_reshape(ctx.shape(x), [int(d) for d in target], bool(node.attrs.get("allowzero", 0)))
    return ctx.add("reshape", [x], {"shape": shape}, node)


def resolve_reshape(in_shape: Sequence[int], target: Sequence[int], allowzero: bool = False) -> tuple[int, ...]:
    """ONNX Reshape's target with 0 (copy that input dim) and -1 (infer) replaced by sizes."""
    out = [in_shape[i] if d == 0 and not allowzero else d for i, d in enumerate(target)]
    if out.count(-1) > 1:
        raise GraphError(f"reshape target {list(target)} has more than one -1")
    total = math.prod(in_shape)
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or total % known:
            raise GraphError(f"cannot reshape {tuple(in_shape)} to {list(target)}")
        out[out.index(-1)] = total // known
    if math.prod(out) != total:
        raise GraphError(f"cannot reshape {tuple(in_shape)} ({total} elements) to {list(target)}")
    return tuple(out)


def _transpose(ctx: _Context, node: OnnxNode) -> str:
    x = ctx.input(node)
    perm = node.attrs.get("perm") or list(reversed(range(len(ctx.shape(x)))))
    return ctx.add("transpose", [x], {"perm": tuple(int(p) for p in perm)}, node)


def _pad(ctx: _Context, node: OnnxNode) -> str:
    """Constant-mode Pad; ``pads`` is [begin_0, begin_1, ..., end_0, end_1, ...] over ``axes``."""
    mode = node.attrs.get("mode", "constant")
    if mode != "constant":
        raise ctx.unsupported(node, f"only mode='constant' is supported, got {mode!r}")
    x = ctx.input(node)
    rank = len(ctx.shape(x))
    if ctx.opset < 11:
        pads, value = node.attrs["pads"], float(node.attrs.get("value", 0.0))
    else:
        pads = ctx.const_input(node, 1, "pads").tolist()
        value = _optional_scalar(ctx, node, 2, "constant_value") or 0.0
    axes = ctx.const_input(node, 3, "axes").tolist() if node.has_input(3) else list(range(rank))
    per_axis = [(0, 0)] * rank
    for k, axis in enumerate(axes):
        per_axis[int(axis) % rank] = (int(pads[k]), int(pads[k + len(axes)]))
    return ctx.add("pad", [x], {"pads": tuple(per_axis), "value": value}, node)


def _reduce(ir_op: str, ctx: _Context, node: OnnxNode) -> str:
    """Axes come from an attribute in old opsets and from an optional input in new ones."""
    x = ctx.input(node)
    rank = len(ctx.shape(x))
    if node.has_input(1):
        axes = ctx.const_input(node, 1, "axes").tolist()
    else:
        axes = node.attrs.get("axes")
    if not axes:
        if node.attrs.get("noop_with_empty_axes", 0):
            return x
        axes = range(rank)
    axes = tuple(sorted(int(a) % rank for a in axes))
    return ctx.add(ir_op, [x], {"axes": axes, "keepdims": bool(node.attrs.get("keepdims", 1))}, node)


# ====================================================================== dispatch table
CONVERTERS: dict[str, Converter] = {
    # elementwise
    **{
        onnx_op: partial(_unary, ir_op)
        for onnx_op, ir_op in {
            "Relu": "relu",
            "Sigmoid": "sigmoid",
            "Tanh": "tanh",
            "HardSwish": "hardswish",
            "Exp": "exp",
            "Log": "log",
            "Sqrt": "sqrt",
            "Neg": "neg",
            "Abs": "abs",
        }.items()
    },
    **{
        onnx_op: partial(_binary, ir_op)
        for onnx_op, ir_op in {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div"}.items()
    },
    "Max": partial(_variadic, "maximum"),
    "Min": partial(_variadic, "minimum"),
    "Clip": _clip,
    "HardSigmoid": _hard_sigmoid,
    "Cast": _cast,
    "Identity": _identity,
    "Dropout": _dropout,
    "Constant": _constant,
    # convolution and pooling
    "Conv": _conv,
    "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "GlobalAveragePool": partial(_global_pool, "reduce_mean"),
    "GlobalMaxPool": partial(_global_pool, "reduce_max"),
    # dense layers and normalisation
    "BatchNormalization": _batch_norm,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Softmax": _softmax,
    # shapes and data movement
    "Concat": _concat,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Pad": _pad,
    # reductions
    "ReduceMean": partial(_reduce, "reduce_mean"),
    "ReduceSum": partial(_reduce, "reduce_sum"),
    "ReduceMax": partial(_reduce, "reduce_max"),
    "ReduceMin": partial(_reduce, "reduce_min"),
}
