"""Import an ONNX model (a ``.onnx`` file or an ``onnx.ModelProto``) into the graph IR.

Each ONNX operator maps, through the dispatch table ``CONVERTERS``, to one small function
(in the ``onnx_*`` modules by family, sharing ``onnx_context``) that emits IR nodes; ONNX
conventions that the IR states differently (``auto_pad``, ``ceil_mode``, Gemm's
``transB``, opset-12 Softmax) are lowered to the IR's explicit form there, so that no
later stage needs to know about them.

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

from collections.abc import Mapping, Sequence
from functools import partial
from os import PathLike
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from dyno_compile.errors import FrontendError, GraphError, UnsupportedOpError
from dyno_compile.frontend import onnx_elementwise as ew
from dyno_compile.frontend import onnx_layers as layers
from dyno_compile.frontend import onnx_shape_ops as shape_ops
from dyno_compile.frontend import onnx_spatial as spatial
from dyno_compile.frontend.onnx_bind import bind_inputs
from dyno_compile.frontend.onnx_context import Context, Converter, OnnxNode, display_name, np_dtype, sanitize
from dyno_compile.frontend.onnx_fold import FOLDERS, fold_only_hint, try_fold
from dyno_compile.ir import Graph

__all__ = ["CONVERTERS", "from_onnx", "supported_ops"]

_DEFAULT_DOMAINS = ("", "ai.onnx")


# ====================================================================== public entry point
def from_onnx(
    path_or_model: str | PathLike[str] | onnx.ModelProto,
    *,
    batch: int | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    name: str | None = None,
) -> Graph:
    """Build a ``Graph`` equal in meaning to the ONNX model.

    ``batch`` sets the first dimension of every input (a dynamic one is 1 by default);
    ``input_shapes`` gives inputs their whole shape by ONNX name, for other dynamic
    dimensions. Both are bound before anything is imported, and an export fixed at batch 1
    has the batch's 1 in its reshape targets rewritten (:mod:`.onnx_bind`). ``name`` names
    the graph (default: the file's stem, else the ONNX graph's name).
    """
    model, source = _load(path_or_model)
    _check(model, source)
    _refuse_unsupported(model.graph, source)
    model = bind_inputs(model, source, batch=batch, shapes=input_shapes)
    ctx = Context(Graph(name or _default_name(path_or_model, model)), source, _opset(model, source))
    ctx.remember_initializers(model.graph)
    _add_inputs(ctx, model.graph)
    for proto in model.graph.node:
        _convert(ctx, OnnxNode.from_proto(proto))
    ctx.graph.set_outputs([ctx.value(o.name, None) for o in model.graph.output])
    return ctx.graph


def supported_ops() -> list[str]:
    """ONNX operator types (default domain) that ``from_onnx`` translates (those in
    ``onnx_fold.FOLDERS`` alone, only on values known at import time)."""
    return sorted(set(CONVERTERS) | set(FOLDERS))


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
    known = set(supported_ops())
    bad = [n for n in graph.node if n.domain not in _DEFAULT_DOMAINS or n.op_type not in known]
    if not bad:
        return
    ops = sorted({_qualified_op(n) for n in bad})
    hint = f"this model uses {len(ops)} unsupported operator type(s): {', '.join(ops)}" if len(ops) > 1 else ""
    first = bad[0]
    raise UnsupportedOpError(_qualified_op(first), display_name(first), source, hint)


def _qualified_op(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"


def _default_name(path_or_model: object, model: onnx.ModelProto) -> str:
    if isinstance(path_or_model, (str, PathLike)):
        return Path(path_or_model).stem
    return model.graph.name or "onnx_model"


# ====================================================================== graph inputs
def _add_inputs(ctx: Context, graph: onnx.GraphProto) -> None:
    """Add graph inputs, static by now (``bind_inputs``); those that are also initializers
    (IR version 3) are weights."""
    for info in (i for i in graph.input if i.name not in ctx.constants):
        shape = tuple(d.dim_value for d in info.type.tensor_type.shape.dim)
        dtype = np_dtype(info.type.tensor_type.elem_type, f"input {info.name!r}", ctx.source)
        ctx.tensors[info.name] = ctx.graph.add_input(sanitize(info.name), shape, dtype).name


# ====================================================================== conversion
def _convert(ctx: Context, node: OnnxNode) -> None:
    """Fold the node if its inputs are known, else run its converter and record where its
    outputs live; errors name the node."""
    try:
        if try_fold(ctx, node, has_ir_form=node.op_type in CONVERTERS):
            return
        if node.op_type not in CONVERTERS:
            raise ctx.unsupported(node, fold_only_hint(ctx, node))
        result = CONVERTERS[node.op_type](ctx, node)
    except (GraphError, ValueError, IndexError) as exc:
        raise FrontendError(f"{ctx.source}: node {node.name!r} ({node.op_type}) cannot be translated: {exc}") from exc
    except KeyError as exc:
        raise FrontendError(
            f"{ctx.source}: node {node.name!r} ({node.op_type}) lacks the required attribute {exc}"
        ) from exc
    if result is None:  # the converter bound its outputs itself (Constant)
        return
    bound = (result,) if isinstance(result, str) else result
    ctx.tensors.update((name, ir_name) for name, ir_name in zip(node.outputs, bound) if name)
    for extra in node.outputs[len(bound) :]:
        if extra:
            ctx.unavailable[extra] = node


# ====================================================================== dispatch table
CONVERTERS: dict[str, Converter] = {
    # elementwise
    **{
        onnx_op: partial(ew.unary, ir_op)
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
            "Erf": "erf",
        }.items()
    },
    **{
        onnx_op: partial(ew.binary, ir_op)
        for onnx_op, ir_op in {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div"}.items()
    },
    "Max": partial(ew.variadic, "maximum"),
    "Min": partial(ew.variadic, "minimum"),
    "Pow": ew.pow_,
    "Gelu": ew.gelu,
    "Clip": ew.clip,
    "HardSigmoid": ew.hard_sigmoid,
    "Cast": ew.cast,
    "CastLike": ew.cast_like,
    "Identity": ew.identity,
    "Dropout": ew.dropout,
    "Constant": ew.constant,
    # convolution and pooling
    "Conv": layers.conv,
    "MaxPool": layers.max_pool,
    "AveragePool": layers.average_pool,
    "GlobalAveragePool": partial(layers.global_pool, "reduce_mean"),
    "GlobalMaxPool": partial(layers.global_pool, "reduce_max"),
    # dense layers and normalisation
    "BatchNormalization": layers.batch_norm,
    "Gemm": layers.gemm,
    "MatMul": layers.matmul,
    "Softmax": layers.softmax,
    "LayerNormalization": layers.layer_norm,
    # shapes and data movement
    "Concat": shape_ops.concat,
    "Flatten": shape_ops.flatten,
    "Reshape": shape_ops.reshape,
    "Transpose": shape_ops.transpose,
    "Pad": shape_ops.pad,
    "Expand": shape_ops.expand,
    "Squeeze": shape_ops.squeeze,
    "Unsqueeze": shape_ops.unsqueeze,
    "Slice": shape_ops.slice_,
    "Gather": shape_ops.gather,
    "Split": shape_ops.split,
    # reductions
    "ReduceMean": partial(layers.reduce, "reduce_mean"),
    "ReduceSum": partial(layers.reduce, "reduce_sum"),
    "ReduceMax": partial(layers.reduce, "reduce_max"),
    "ReduceMin": partial(layers.reduce, "reduce_min"),
    # detection and segmentation backbones, older CNNs
    "Resize": spatial.resize,
    "ConvTranspose": spatial.conv_transpose,
    "PRelu": spatial.prelu,
    "LeakyRelu": spatial.leaky_relu,
    "InstanceNormalization": spatial.instance_norm,
    "LRN": spatial.lrn,
}
