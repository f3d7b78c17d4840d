"""Find every point where the graph can be cut between the device and the cloud.

A cut is a position ``k`` in the graph's fixed topological order of compute nodes: the
device runs nodes ``[0, k)``, the cloud runs ``[k, n)``. The tensors crossing it are those
produced before ``k`` (graph inputs count as produced on the device) and read at or after
``k``. Weights never cross: both sides hold the whole model. ``k = 0`` is cloud-only (the
input crosses); ``k = n`` is device-only (nothing crosses). A ResNet block boundary
crosses one tensor; a cut inside a residual block crosses two (the branch and the
shortcut). Each crossing tensor comes with its channel axis (:mod:`.channel_axes`), which
per-channel quantisation at the cut reduces around.
"""

from __future__ import annotations

from dataclasses import dataclass

from dyno_compile.ir import CONST_OP, Graph
from dyno_compile.passes.channel_axes import channel_axes


@dataclass(frozen=True)
class CutPoint:
    position: int
    #: Last node run on the device (None for cloud-only).
    after: str | None
    #: First node run in the cloud (None for device-only).
    before: str | None
    tensors: tuple[str, ...]
    nbytes: int
    #: Per crossing tensor, in order: the axis holding its channels (1 in NCHW, 3 in NHWC).
    channel_axes: tuple[int, ...]

    @property
    def kind(self) -> str:
        if self.before is None:
            return "device-only"
        return "cloud-only" if self.after is None else "split"

    @property
    def single_tensor(self) -> bool:
        return len(self.tensors) == 1

    def to_dict(self) -> dict:
        return {
            "position": self.position,
            "after": self.after,
            "before": self.before,
            "kind": self.kind,
            "tensors": list(self.tensors),
            "bytes": self.nbytes,
            "channel_axes": list(self.channel_axes),
        }


def find_cuts(graph: Graph) -> list[CutPoint]:
    """All ``n + 1`` cut points, in order, found by one sweep over tensor live ranges."""
    order = graph.compute_nodes
    position = {node.name: k for k, node in enumerate(order)}
    for node in graph.inputs:
        position[node.name] = -1
    last_read: dict[str, int] = {}
    for k, node in enumerate(order):
        for i in node.inputs:
            if graph.node(i).op != CONST_OP:
                last_read[i] = k
    born: dict[int, list[str]] = {}
    for name, pos in position.items():
        if name in last_read:
            born.setdefault(pos, []).append(name)

    axes = channel_axes(graph)
    cuts, live = [], set(born.get(-1, []))
    for k in range(len(order) + 1):
        if k > 0:
            live |= set(born.get(k - 1, []))
        live = {t for t in live if last_read[t] >= k}
        tensors = tuple(sorted(live, key=lambda t: (position[t], t)))
        cuts.append(
            CutPoint(
                k,
                order[k - 1].name if k > 0 else None,
                order[k].name if k < len(order) else None,
                tensors,
                sum(graph.node(t).type.nbytes for t in tensors),
                tuple(axes[t] for t in tensors),
            )
        )
    return cuts
