"""Insert DynO's quantize/pack at a split's sends and unpack/dequantize in the cloud.

For every crossing tensor ``t`` at ``bits`` 1..16 the device computes ``t.range`` (this
input's lo/scale, per tensor or per channel), ``t.codes`` and ``t.packed`` (dense bit
stream) and sends both; the cloud takes ``t.packed`` and ``t.range`` as inputs and
rebuilds ``t`` with ``bitunpack`` and ``dequantize``. ``"float16"`` sends a half-precision
cast; ``"float32"`` leaves the split as it is. The lossless codec stage runs outside the
graph (``dyno_compile.packing``), on the host side of each end.

Before (device): ``%t.send = send(%t)``; (cloud) ``input %t``.
After  (device): ``send(bitpack(quantize(%t, quant_range(%t))))``, ``send(%t.range)``;
       (cloud)  ``%t = dequantize(bitunpack(input %t.packed), input %t.range)``.
"""
from __future__ import annotations

from dataclasses import replace

from dyno_compile.errors import GraphError
from dyno_compile.ir import Graph
from dyno_compile.passes.split import SplitModel

FLOAT_MODES = ("float16", "float32")


def insert_pack(model: SplitModel, bits: int | str, *, granularity: str = "tensor", axis: int = 1) -> SplitModel:
    if bits == "float32" or model.cloud is None:
        return model
    if bits != "float16" and not (isinstance(bits, int) and 1 <= bits <= 16):
        raise GraphError(f"bits must be 1..16, 'float16' or 'float32', got {bits!r}")
    device, cloud = model.device.copy(), model.cloud.copy()
    sends = []
    for slot, t in enumerate(model.cut.tensors):
        if bits == "float16":
            sends.append(device.add("send", [device.add("cast", [t], {"dtype": "float16"}, name=f"{t}.half").name],
                                    {"cut": model.cut.position, "slot": slot}, name=f"{t}.half.send").name)
            _receive_half(cloud, t)
        else:
            q = {"bits": bits, "granularity": granularity, "axis": axis}
            rng = device.add("quant_range", [t], q, name=f"{t}.range")
            codes = device.add("quantize", [t, rng.name], q, name=f"{t}.codes")
            packed = device.add("bitpack", [codes.name], {"bits": bits}, name=f"{t}.packed")
            for k, part in enumerate((packed.name, rng.name)):
                sends.append(device.add("send", [part], {"cut": model.cut.position, "slot": 2 * slot + k},
                                        name=f"{part}.send").name)
            _receive_quantized(cloud, t, bits, rng.type, granularity, axis)
    device.set_outputs(sends)
    for old in model.device.outputs:
        device.erase(old)
    return replace(model, device=device, cloud=cloud)


def _receive_half(cloud: Graph, t: str) -> None:
    original = cloud.node(t)
    half = cloud.add_input(f"{t}.half", original.shape, "float16")
    cloud.substitute(t, cloud.add("cast", [half.name], {"dtype": original.dtype}).name)


def _receive_quantized(cloud: Graph, t: str, bits: int, range_type, granularity: str, axis: int) -> None:
    original = cloud.node(t)
    nbytes = (original.type.size * bits + 7) // 8
    packed = cloud.add_input(f"{t}.packed", (nbytes,), "uint8")
    rng = cloud.add_input(f"{t}.range", range_type.shape, range_type.dtype)
    codes = cloud.add("bitunpack", [packed.name], {"bits": bits, "shape": original.shape}, name=f"{t}.codes")
    value = cloud.add("dequantize", [codes.name, rng.name], {"granularity": granularity, "axis": axis})
    if value.dtype != original.dtype:
        value = cloud.add("cast", [value.name], {"dtype": original.dtype})
    cloud.substitute(t, value.name)
