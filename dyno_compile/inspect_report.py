"""The ``inspect`` report: per-layer costs and every cut point, as data for tables or JSON."""

from __future__ import annotations

from typing import Any

from dyno_compile.ir import Graph
from dyno_compile.passes import CutPoint, find_cuts


def inspect_report(graph: Graph) -> dict[str, Any]:
    """Summarise a cost-annotated graph (run ``annotate_costs`` first)."""
    layers = [
        {
            "index": k,
            "name": n.name,
            "op": n.op,
            "shape": list(n.shape),
            "dtype": n.dtype,
            "macs": n.meta.get("macs", 0),
            "weight_bytes": n.meta.get("weight_bytes", 0),
            "out_bytes": n.meta.get("out_bytes", 0),
        }
        for k, n in enumerate(graph.compute_nodes)
    ]
    cuts: list[CutPoint] = find_cuts(graph)
    return {
        "model": graph.name,
        "inputs": [{"name": n.name, "shape": list(n.shape), "dtype": n.dtype} for n in graph.inputs],
        "outputs": [
            {"name": o, "shape": list(graph.node(o).shape), "dtype": graph.node(o).dtype} for o in graph.outputs
        ],
        "totals": {
            "layers": len(layers),
            "macs": sum(x["macs"] for x in layers),
            "weight_bytes": sum(v.nbytes for v in graph.params.values()),
            "cuts": len(cuts),
            "single_tensor_cuts": sum(c.single_tensor for c in cuts),
        },
        "layers": layers,
        "cuts": [c.to_dict() for c in cuts],
    }
