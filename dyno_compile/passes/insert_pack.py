"""Insert DynO's quantize/pack at a split's sends and unpack/dequantize in the cloud.

For every crossing tensor ``t`` at ``bits`` 1..16 the device computes ``t.range`` (this
input's lo/scale, per tensor or per channel along the cut's channel axis for ``t``),
``t.codes`` and ``t.packed`` (dense bit stream) and sends both; the cloud takes
``t.packed`` and ``t.range`` as inputs and rebuilds ``t`` with ``bitunpack`` and
``dequantize``. ``"float16"`` sends a half-precision
cast; ``"float32"`` leaves the split as it is. The lossless codec stage runs outside the
graph (``dyno_compile.packing``), on the host side of each end.

Before (device): ``%t.send = send(%t)``; (cloud) ``input %t``.
After  (device): ``send(bitpack(quantize(%t, quant_range(%t))))``, ``send(%t.range)``;
       (cloud)  ``%t = dequantize(bitunpack(input %t.packed), input %t.range)``.
"""

from __future__ import annotations

from dataclasses import replace

from dyno_compile.errors import GraphError
from dyno_compile.ir import Graph, TensorType
from dyno_compile.ir.ops import DEFAULT_CHANNEL_AXIS
from dyno_compile.packing import packed_nbytes
from dyno_compile.packing.vocab import Mode, check_granularity, check_mode, refused_as
from dyno_compile.passes.split import SplitModel


def check_bits(bits: Mode) -> Mode:
    """``bits`` if it is a width the cut ops take (1..16, or a float mode); GraphError otherwise."""
    with refused_as(GraphError):
        return check_mode(bits)


def insert_pack(model: SplitModel, bits: Mode, *, granularity: str = "tensor") -> SplitModel:
    """``model`` with its crossing tensors sent at ``bits``; per channel, each tensor's range
    is taken along its own channel axis (``model.cut.channel_axes``)."""
    check_bits(bits)
    with refused_as(GraphError):
        check_granularity(granularity)
    if bits == "float32" or model.cloud is None:
        return model
    device, cloud = model.device.copy(), model.cloud.copy()
    sends = []
    for slot, (t, axis) in enumerate(zip(model.cut.tensors, model.cut.channel_axes)):
        parts = emit_pack(device, t, bits, granularity=granularity, axis=axis)
        sends += [
            device.add(
                "send", [part], {"cut": model.cut.position, "slot": len(parts) * slot + k}, name=f"{part}.send"
            ).name
            for k, part in enumerate(parts)
        ]
        original = cloud.node(t)
        value = emit_receive(cloud, t, original.type, bits, granularity=granularity, axis=axis)
        cloud.substitute(t, value)
    device.set_outputs(sends)
    for old in model.device.outputs:
        device.erase(old)
    return replace(model, device=device, cloud=cloud)


def emit_pack(
    graph: Graph, t: str, bits: Mode, *, granularity: str = "tensor", axis: int = DEFAULT_CHANNEL_AXIS
) -> list[str]:
    """Add the device-side nodes that pack ``t``; returns what is sent, in wire order."""
    if bits == "float16":
        return [graph.add("cast", [t], {"dtype": "float16"}, name=f"{t}.half").name]
    q = {"bits": bits, "granularity": granularity, "axis": axis}
    rng = graph.add("quant_range", [t], q, name=f"{t}.range")
    codes = graph.add("quantize", [t, rng.name], q, name=f"{t}.codes")
    return [graph.add("bitpack", [codes.name], {"bits": bits}, name=f"{t}.packed").name, rng.name]


def emit_receive(
    graph: Graph,
    t: str,
    original: TensorType,
    bits: Mode,
    *,
    granularity: str = "tensor",
    axis: int = DEFAULT_CHANNEL_AXIS,
) -> str:
    """Add cloud-side inputs for what ``emit_pack`` sends and the nodes rebuilding ``t``;
    returns the rebuilt value (of ``original``'s type)."""
    if bits == "float16":
        half = graph.add_input(f"{t}.half", original.shape, "float16")
        value = graph.add("cast", [half.name], {"dtype": "float32"})
    elif isinstance(bits, str):  # float32: the tensor crosses as it is, so nothing is received
        raise GraphError(f"emit_receive: bits {bits!r} is sent unpacked; there is nothing to unpack")
    else:
        range_shape = (2,) if granularity == "tensor" else (2, original.shape[axis])
        packed = graph.add_input(f"{t}.packed", (packed_nbytes(original.size, bits),), "uint8")
        rng = graph.add_input(f"{t}.range", range_shape, "float32")
        codes = graph.add("bitunpack", [packed.name], {"bits": bits, "shape": original.shape}, name=f"{t}.codes")
        value = graph.add("dequantize", [codes.name, rng.name], {"granularity": granularity, "axis": axis})
    if value.dtype != original.dtype:
        value = graph.add("cast", [value.name], {"dtype": original.dtype})
    return value.name


def pack_graph(
    tensor: TensorType, bits: Mode, *, granularity: str = "tensor", axis: int = DEFAULT_CHANNEL_AXIS, name: str = "pack"
) -> Graph:
    """A standalone device kernel: one tensor in, what goes on the wire out."""
    graph = Graph(name)
    graph.add_input("x", tensor.shape, tensor.dtype)
    graph.set_outputs(emit_pack(graph, "x", check_bits(bits), granularity=granularity, axis=axis))
    return graph


def unpack_graph(
    tensor: TensorType,
    bits: Mode,
    *,
    granularity: str = "tensor",
    axis: int = DEFAULT_CHANNEL_AXIS,
    name: str = "unpack",
) -> Graph:
    """A standalone cloud kernel: what came off the wire in, the tensor out."""
    graph = Graph(name)
    graph.set_outputs([emit_receive(graph, "x", tensor, check_bits(bits), granularity=granularity, axis=axis)])
    return graph
