"""What a build compiles: the segment chain and the pack/unpack kernels of every candidate cut.

Pure data, no TVM: both sides get the same segments (any cut can run at any time) plus
their half of the cut kernels — ``pack_*`` on the device, ``unpack_*`` in the cloud. One
kernel serves every crossing tensor of its shape, dtype and bit width (and, per channel,
channel axis), so a ResNet's many cuts of equal shape share a handful of kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dyno_compile.errors import DynoError
from dyno_compile.ir import Graph, TensorType
from dyno_compile.packing.vocab import Mode, check_granularity, refused_as
from dyno_compile.passes import CutPoint, find_cuts
from dyno_compile.passes.insert_pack import check_bits, pack_graph, unpack_graph
from dyno_compile.passes.segment import Segment, segment

DEFAULT_BITS: tuple[Mode, ...] = ("float32", "float16", 16, 8, 4, 2)


@dataclass
class BuildPlan:
    graph: Graph
    cuts: list[CutPoint]
    segments: list[Segment]
    bits: tuple[Mode, ...]
    granularity: str
    #: Requests the cloud's batched segments take at once (1: no batched segments).
    cloud_batch: int = 1
    device_functions: dict[str, Graph] = field(default_factory=dict)
    cloud_functions: dict[str, Graph] = field(default_factory=dict)
    cut_table: list[dict[str, Any]] = field(default_factory=list)


def candidate_cuts(graph: Graph, which: str = "single") -> list[CutPoint]:
    """``"single"``: cuts crossing one tensor, plus cloud-only and device-only (DynO's layer
    outputs); ``"all"``: every position."""
    cuts = find_cuts(graph)
    if which == "all":
        return cuts
    if which != "single":
        raise DynoError(f"cut selection must be 'single' or 'all', got {which!r}")
    return [c for c in cuts if c.kind != "split" or c.single_tensor]


def plan_build(
    graph: Graph,
    cuts: Sequence[CutPoint],
    *,
    bits: Sequence[Mode] = DEFAULT_BITS,
    granularity: str = "tensor",
    batched: Graph | None = None,
) -> BuildPlan:
    """``batched``: the same model imported at a larger batch size B; its segments go into
    the cloud library as ``segment_<i>_b<B>``, so a server can run B requests that arrive
    together in one call (each is unpacked alone, since each has its own range)."""
    bits = tuple(check_bits(b) for b in bits)
    with refused_as(DynoError):
        check_granularity(granularity)
    every = find_cuts(graph)
    cuts = [every[p] for p in sorted({0, len(every) - 1, *(c.position for c in cuts)})]  # both ends always
    segments = segment(graph, [c.position for c in cuts])
    plan = BuildPlan(graph, cuts, segments, bits, granularity)
    for s in segments:
        plan.device_functions[f"segment_{s.index}"] = s.graph
        plan.cloud_functions[f"segment_{s.index}"] = s.graph
    if batched is not None:
        plan.cloud_batch = _batch_of(graph, batched)
        for s in segment(batched, [c.position for c in cuts]):
            plan.cloud_functions[batched_name(s.index, plan.cloud_batch)] = s.graph
    for k, cut in enumerate(plan.cuts):
        plan.cut_table.append(_cut_entry(plan, k, cut))
    return plan


def batched_name(segment_index: int, batch: int) -> str:
    return f"segment_{segment_index}_b{batch}"


def _batch_of(graph: Graph, batched: Graph) -> int:
    """The batched graph's batch size, after checking it is ``graph`` with every tensor's
    leading dimension scaled from 1 to B (so requests can be stacked along axis 0)."""
    if not graph.inputs or graph.inputs[0].shape[:1] != (1,):
        raise DynoError(f"model {graph.name!r}: cloud batching needs the model built at batch 1")
    batch = batched.inputs[0].shape[0]
    mine, theirs = graph.compute_nodes, batched.compute_nodes
    same = (
        len(mine) == len(theirs)
        and batch > 1
        and all(
            a.name == b.name and a.op == b.op and a.shape[:1] == (1,) and b.shape == (batch, *a.shape[1:])
            for a, b in zip(mine, theirs)
        )
    )
    if not same:
        raise DynoError(
            f"model {graph.name!r}: the batched import is not the same graph with batch {batch} on axis 0; "
            "this model cannot be batched in the cloud (build with --cloud-batch 1)"
        )
    return batch


def kernel_key(t: TensorType, bits: Mode, granularity: str, axis: int) -> str:
    """The name suffix of the pack/unpack kernel pair for a tensor of type ``t``; per channel
    it names the channel axis, since an NCHW and an NHWC tensor can have the same shape."""
    key = f"{t.dtype}_{'x'.join(map(str, t.shape))}_{bits}"
    return f"{key}_axis{axis}" if granularity == "channel" else key


def _cut_entry(plan: BuildPlan, index: int, cut: CutPoint) -> dict[str, Any]:
    """One row of the cut table: which segments each side runs and which kernels pack the tensors."""
    entry = {
        **cut.to_dict(),
        "device_segments": list(range(index)),
        "cloud_segments": list(range(index, len(plan.segments))),
        "kernels": {},
    }
    if cut.kind == "device-only":
        return entry
    for b in plan.bits:
        if b == "float32":
            continue
        names = []
        for t, axis in zip(cut.tensors, cut.channel_axes):
            ttype = plan.graph.node(t).type
            key = kernel_key(ttype, b, plan.granularity, axis)
            if f"pack_{key}" not in plan.device_functions:
                plan.device_functions[f"pack_{key}"] = pack_graph(
                    ttype, b, granularity=plan.granularity, axis=axis, name=f"pack_{key}"
                )
                plan.cloud_functions[f"unpack_{key}"] = unpack_graph(
                    ttype, b, granularity=plan.granularity, axis=axis, name=f"unpack_{key}"
                )
            names.append({"tensor": t, "pack": f"pack_{key}", "unpack": f"unpack_{key}"})
        entry["kernels"][str(b)] = names
    return entry
