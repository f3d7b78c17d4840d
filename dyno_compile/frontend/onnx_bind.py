"""Bind an ONNX model's dynamic input dimensions to sizes, before anything is imported.

Exporters mark the batch axis dynamic (``torch.onnx``'s ``dynamic_axes``, the dynamo
exporter's ``s0``), and some mark the image size too; the IR needs static shapes. Two
ways to bind, one rule each:

* ``batch`` sets the first dimension of every input of rank >= 1, dynamic or fixed. Left
  unset, a dynamic first dimension is 1 (one request) and a fixed one stays.
* ``shapes`` gives inputs their whole shape by ONNX name (``--input-shape x=1x3x224x224``),
  of the declared rank; it may also change a fixed dimension (a fully convolutional model
  at another image size: the import then checks every layer against it).

Anything still dynamic is an error naming the option that binds it.

An export fixed at batch 1 often bakes that 1 into Reshape targets (the dynamo exporter
flattens to ``[1, 512]`` before the classifier). Asked for another batch, such a reshape
cannot hold the batched tensor; where its target is a constant whose leading 1 stands
for the batch (the reshaped tensor leads with the bound batch, and the target fits it
once that 1 is the batch), the leading 1 becomes the batch. A constant target that fits
neither way is an error naming the reshape and why, before anything is imported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from dyno_compile.errors import FrontendError
from dyno_compile.frontend.onnx_context import OnnxNode, constant_value
from dyno_compile.frontend.onnx_shape_ops import resolve_reshape

__all__ = ["BIND_HINT", "bind_inputs", "parse_input_shape"]

#: How a user binds a dimension, named in every error about one: from the command line and
#: from Python.
BIND_HINT = "--batch N or --input-shape NAME=DxDx... (from Python: from_onnx(..., batch=, input_shapes=))"

Dim = int | str  # a size, or the name of a dynamic dimension ("?" when unnamed)


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME=1x3x224x224`` -> ``("NAME", (1, 3, 224, 224))``; the name may hold ``=``."""
    name, sep, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x")) if sep and name else ()
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise FrontendError(f"--input-shape {text!r}: expected NAME=DxDx... with sizes >= 1, e.g. input=1x3x224x224")
    return name, shape


def bind_inputs(
    model: onnx.ModelProto,
    source: str,
    *,
    batch: int | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> onnx.ModelProto:
    """``model`` with every real input of static shape (see the module doc): a copy where a
    dimension is bound, ``model`` itself where all already are."""
    if batch is not None and batch < 1:
        raise FrontendError(f"{source}: batch must be at least 1, got {batch}")
    given = {k: tuple(int(d) for d in v) for k, v in (shapes or {}).items()}
    weights = {t.name for t in model.graph.initializer}
    real = [i for i in model.graph.input if i.name not in weights]
    unknown = sorted(set(given) - {i.name for i in real})
    if unknown:
        raise FrontendError(
            f"{source}: no input named {', '.join(map(repr, unknown))}; "
            f"the model's inputs are {', '.join(repr(i.name) for i in real)}"
        )
    declared = {info.name: _declared(info, source) for info in real}
    statics = {name: _static_shape(name, dims, given.get(name), batch, source) for name, dims in declared.items()}
    if all(declared[name] == list(static) for name, static in statics.items()):
        return model  # static already: no copy of the weights
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    rebatched: int | None = None  # the new batch of an export fixed at another one
    for info in (i for i in bound.graph.input if i.name in statics):
        old, static = declared[info.name], statics[info.name]
        if static and old and isinstance(old[0], int) and old[0] != static[0]:
            rebatched = static[0]
        dims = info.type.tensor_type.shape.dim
        del dims[:]
        for size in static:
            dims.add().dim_value = size
    if rebatched is not None:
        _rebatch_reshapes(bound, rebatched, source)
    return bound


def _declared(info: onnx.ValueInfoProto, source: str) -> list[Dim] | None:
    """The declared dims, None where the model declares no shape at all."""
    if not info.type.HasField("tensor_type"):
        raise FrontendError(f"{source}: input {info.name!r} is not a tensor")
    tt = info.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]


def _static_shape(
    name: str, declared: list[Dim] | None, given: tuple[int, ...] | None, batch: int | None, source: str
) -> tuple[int, ...]:
    if given is not None:
        if declared is not None and len(given) != len(declared):
            raise FrontendError(
                f"{source}: the shape given to input {name!r}, {_spelled(given)}, has rank {len(given)}, "
                f"but the model declares {_spelled(declared)} (rank {len(declared)})"
            )
        if batch is not None and given and given[0] != batch:
            raise FrontendError(
                f"{source}: the shape given to input {name!r}, {_spelled(given)}, and batch {batch} disagree"
            )
        return given
    if declared is None:
        raise FrontendError(f"{source}: input {name!r} declares no shape; give it one with {BIND_HINT}")
    dims = list(declared)
    if dims and (batch is not None or isinstance(dims[0], str)):
        dims[0] = batch or 1
    dynamic = [k for k, d in enumerate(dims) if isinstance(d, str)]
    if dynamic:
        example = "x".join(str(d) if isinstance(d, int) else "?" for d in dims)
        raise FrontendError(
            f"{source}: input {name!r} has dynamic dimensions {_spelled(declared)} "
            f"(dimension {', '.join(map(str, dynamic))}); bind them with --input-shape {name}={example} "
            f"(sizes for each '?'; from Python: from_onnx(..., input_shapes={{{name!r}: (...)}}))"
        )
    return tuple(int(d) for d in dims)


def _spelled(dims: Sequence[Dim]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _rebatch_reshapes(model: onnx.ModelProto, batch: int, source: str) -> None:
    """Turn a constant leading 1 that stands for the batch into ``batch``, one reshape at a
    time in graph order (each rewrite changes the shapes inferred after it); a constant
    target that fits neither way is an error naming the reshape."""
    done: set[int] = set()
    while True:
        inferred = _inferred_shapes(model)
        for k, node in enumerate(model.graph.node):
            if k in done or node.op_type != "Reshape" or len(node.input) < 2:
                continue
            data = inferred.get(node.input[0])
            target = _constant(model, node.input[1])
            if data is None or target is None or target.ndim != 1 or len(target) == 0:
                continue
            done.add(k)
            batched = target.copy()
            batched[0] = batch
            leads_with_batch = target[0] == 1 and data[0] == batch
            if leads_with_batch and _fits(data, batched):
                name = _unique(model, f"{node.input[1]}_batch{batch}")
                model.graph.initializer.append(numpy_helper.from_array(batched, name))
                node.input[1] = name
                break
            if not _fits(data, target):
                why = (
                    f"nor does {batched.tolist()}, with its leading 1 as the batch"
                    if leads_with_batch
                    else f"and its leading {target[0]} does not stand for the batch"
                )
                raise FrontendError(
                    f"{source}: at batch {batch}, Reshape {node.name or node.output[0]!r} cannot "
                    f"reshape {data} to its fixed target {target.tolist()}, {why} (the model was "
                    f"exported for another batch): export it with a dynamic batch, or build it at "
                    f"the batch it was exported for"
                )
        else:
            return


def _fits(data: tuple[int, ...], target: np.ndarray) -> bool:
    try:
        resolve_reshape(data, target.tolist())
    except Exception:  # noqa: BLE001  # resolve_reshape's refusal is the answer
        return False
    return True


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes ONNX's own inference gives each tensor (those it can)."""
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001  # no inference: no rewrite; the import then names the reshape
        return {}
    out = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info]:
        dims = info.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[info.name] = tuple(d.dim_value for d in dims)
    return out


def _constant(model: onnx.ModelProto, tensor: str) -> np.ndarray | None:
    """The value of an initializer or a Constant node's output, else None."""
    for init in model.graph.initializer:
        if init.name == tensor:
            return numpy_helper.to_array(init).astype(np.int64)
    for node in model.graph.node:
        if node.op_type == "Constant" and tensor in node.output:
            value = constant_value(OnnxNode.from_proto(node))
            return None if value is None else value.astype(np.int64)
    return None


def _unique(model: onnx.ModelProto, name: str) -> str:
    taken = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    k = 0
    while (candidate := name if k == 0 else f"{name}_{k}") in taken:
        k += 1
    return candidate
