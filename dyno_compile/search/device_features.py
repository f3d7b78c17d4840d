"""Per-node op-cost features of the models that real devices have published latencies for.

The device model (:mod:`dyno_compile.search.device_model`) prices a model node by node:
each node's op class, floating-point work and bytes moved, exactly as
:func:`dyno_compile.passes.annotate_costs` counts them on graphs from our own frontends.
Building VGG16's or ResNet-50's graph through JAX takes seconds, so the features of the
published models are extracted once, by :func:`write_features` (``python -m
dyno_compile.search.device_features``), into a small JSON beside this module, and every
fit reads that; a test re-extracts a small model and compares.

Op classes (what separates the kernels ncnn and XNNPACK run, and their efficiencies):

* ``conv3x3s1``: dense (``groups == 1``) 3x3 convolutions of stride 1: the ones ncnn runs
  with Winograd, fewer multiplies than their MACs (an efficiency above 1 of the naive roofline);
* ``conv``: the other dense kxk convolutions, k > 1 (strided, or 5x5, 7x7: im2col + GEMM),
  and transposed convolutions (grouped ones are ``dwconv``);
* ``conv1x1``: dense 1x1 convolutions (a plain GEMM);
* ``dwconv``: grouped convolutions (depthwise, one input channel per group): little reuse;
* ``fc``: dense layers, and 1x1 convolutions on a 1x1 map (squeeze-excite): matrix-vector,
  bound by reading their weights;
* ``other``: everything else (elementwise, pooling, concat, reshape): memory-bound;
* ``fused``: an activation (:data:`FUSED_ACTIVATIONS`) that is the only user of a conv
  (transposed or not) or dense layer's output: the layer's epilogue computes it, so it
  costs nothing itself.

Bytes are counted as float32 (4 bytes an element) whatever the graph's dtype: the
published rows are fp32, and SqueezeNet's ONNX file is float16.
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dyno_compile.errors import InputError
from dyno_compile.ir import Graph, Node

CLASSES = ("conv3x3s1", "conv", "conv1x1", "dwconv", "fc", "other", "fused")
#: Activations that ncnn, XNNPACK and our schedule compute in the epilogue of the conv or
#: dense layer that produces their input (when they are its only user): no kernel of their own.
FUSED_ACTIVATIONS = frozenset(
    {"relu", "relu6", "clip", "silu", "sigmoid", "hardswish", "hardsigmoid", "leaky_relu", "prelu"}
)
FEATURES_FILE = Path(__file__).with_name("device_features.json")
FEATURES_VERSION = 3

#: The models of the published rows and how we build their IR. SqueezeNet 1.1 is the real
#: ONNX file, re-imported at the 227x227 input ncnn's benchmark runs (every shape follows
#: from the input: the exact graph, no scaling); the others are zoo entries (random
#: weights: costs need only shapes), each the network the rows' framework ran: ncnn's
#: "resnet50" is the Caffe v1 network (``benchmark/resnet50.param`` strides in
#: ``res3a_branch2a``, a 1x1 conv), so it is costed as ``resnet50_v1``, not torchvision's
#: v1.5 (:mod:`dyno_compile.zoo.resnet50_v1`, the zoo's ResNet-50 parameters).
#: ``efficientnet_b0`` is B0 with Swish and
#: squeeze-excite, ``efficientnet_lite0`` Lite0 (ReLU6, no SE), both 224x224.
ANCHOR_MODELS: dict[str, str] = {
    "squeezenet1.1": "imagenet/squeezenet1.1_fp16.onnx@227",
    "mobilenet_v2": "zoo:mobilenet_v2",
    "efficientnet_b0": "zoo:efficientnet_b0",
    "efficientnet_lite0": "zoo:efficientnet_lite0",
    "resnet18": "zoo:resnet18",
    "resnet50": "v1:resnet50",
    "vgg16": "zoo:vgg16",
    # not a published model: torchvision's v1.5, so the report can show what costing it instead of v1 does
    "resnet50_v1.5": "zoo:resnet50",
}


@dataclass(frozen=True)
class Features:
    """One graph's nodes as the device model sees them: class index (into :data:`CLASSES`),
    floating-point operations (2 per multiply-accumulate) and bytes moved, per node."""

    classes: np.ndarray
    flops: np.ndarray
    nbytes: np.ndarray

    def __len__(self) -> int:
        return len(self.classes)

    @classmethod
    def of(cls, rows: Iterable[tuple[int, float, float]]) -> Features:
        items = list(rows)
        return cls(
            np.array([r[0] for r in items], dtype=np.int64),
            np.array([r[1] for r in items], dtype=np.float64),
            np.array([r[2] for r in items], dtype=np.float64),
        )

    def to_dict(self) -> dict[str, list]:
        return {"classes": self.classes.tolist(), "flops": self.flops.tolist(), "nbytes": self.nbytes.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Features:
        return cls.of(zip(d["classes"], d["flops"], d["nbytes"]))

    def totals(self) -> dict[str, float]:
        """GFLOP and MB per class, for tables."""
        out: dict[str, float] = {}
        for i, name in enumerate(CLASSES):
            sel = self.classes == i
            out[f"{name}_gflop"] = float(self.flops[sel].sum() / 1e9)
            out[f"{name}_mb"] = float(self.nbytes[sel].sum() / 1e6)
        return out


def node_class(graph: Graph, node: Node, within: Container[str] | None = None) -> int:
    """Index in :data:`CLASSES` of ``node`` (see the module docstring). An activation is
    ``fused`` only where its producer is in ``within`` (the same compiled function; any
    node of the graph when None): a function cannot fuse into a kernel of another."""
    if node.op in FUSED_ACTIVATIONS and node.inputs:
        producer = graph.node(node.inputs[0])
        if (
            producer.op in ("conv2d", "conv2d_transpose", "dense")
            and len(graph.users(producer.name)) == 1
            and (within is None or producer.name in within)
        ):
            return CLASSES.index("fused")
    if node.op == "dense":
        return CLASSES.index("fc")
    if node.op == "conv2d_transpose":
        return CLASSES.index("conv" if node.attrs["groups"] == 1 else "dwconv")
    if node.op == "conv2d":
        w = graph.node(node.inputs[1]).shape
        kh, kw = (w[2], w[3]) if node.attrs["kernel_layout"] == "OIHW" else (w[0], w[1])
        spatial = int(np.prod(node.type.shape[2:])) if node.attrs.get("data_layout", "NCHW") == "NCHW" else 0
        if node.attrs.get("groups", 1) != 1:
            return CLASSES.index("dwconv")
        if kh * kw == 1:
            return CLASSES.index("fc" if spatial == 1 else "conv1x1")
        if (kh, kw) == (3, 3) and tuple(node.attrs.get("strides", (1, 1))) == (1, 1):
            return CLASSES.index("conv3x3s1")
        return CLASSES.index("conv")
    return CLASSES.index("other")


def node_features(graph: Graph, nodes: Iterable[Node], *, one_function: bool = False) -> Features:
    """Features of ``nodes`` of an annotated ``graph`` (:func:`annotate_costs` meta), bytes as
    float32. ``one_function``: the nodes are one compiled function, which fuses only its own."""
    nodes = list(nodes)
    within = {n.name for n in nodes} if one_function else None
    rows = []
    for node in nodes:
        m = node.meta
        if "macs" not in m:
            raise InputError(f"node {node.name} has no cost annotation: run passes.annotate_costs first")
        reads = [graph.node(i) for i in node.inputs]
        elements = sum(r.type.size for r in reads) + node.type.size  # weights and activations alike
        cls = node_class(graph, node, within)
        if cls == CLASSES.index("fused"):
            rows.append((cls, 0.0, 0.0))
            continue
        flops = 2.0 * m["macs"] if cls != CLASSES.index("other") else 0.0
        rows.append((cls, flops, 4.0 * elements))
    return Features.of(rows)


def graph_features(graph: Graph) -> Features:
    """Features of every compute node of ``graph`` (annotated here if it is not yet)."""
    from dyno_compile.passes import annotate_costs

    annotated = annotate_costs(graph)
    return node_features(annotated, annotated.compute_nodes)


def build_graph(model: str) -> Graph:
    """The optimised IR graph of one of :data:`ANCHOR_MODELS` (needs the shared data for SqueezeNet)."""
    from dyno_compile.datasets import data_root
    from dyno_compile.frontend.onnx_import import from_onnx
    from dyno_compile.frontend.resolve import load_model
    from dyno_compile.passes import run_passes

    try:
        spec = ANCHOR_MODELS[model]
    except KeyError:
        raise InputError(f"no IR recipe for published model {model!r}; known: {', '.join(ANCHOR_MODELS)}") from None
    if spec.startswith("zoo:"):
        return run_passes(load_model(spec[4:]))
    if spec == "v1:resnet50":
        from dyno_compile import zoo
        from dyno_compile.frontend.jax_import import from_jax
        from dyno_compile.zoo.resnet50_v1 import resnet50_v1

        m = zoo.get_model("resnet50", weights=zoo.RANDOM)
        return run_passes(from_jax(resnet50_v1, m.params, m.random_input(), name="resnet50_v1"))
    rel, _, size = spec.partition("@")
    path = data_root() / rel
    probe = from_onnx(path)
    shapes = {i.name: (1, i.shape[1], int(size), int(size)) for i in probe.inputs}
    return run_passes(from_onnx(path, input_shapes=shapes))


def extract(models: Iterable[str] = ANCHOR_MODELS) -> dict[str, Features]:
    return {m: graph_features(build_graph(m)) for m in models}


def write_features(path: Path = FEATURES_FILE) -> dict[str, Features]:
    """Extract every anchor model's features and store them (the one command that makes the cache)."""
    feats = extract()
    data = {"version": FEATURES_VERSION, "classes": list(CLASSES), "models": {m: f.to_dict() for m, f in feats.items()}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    tmp.replace(path)
    return feats


def load_features(path: Path = FEATURES_FILE) -> dict[str, Features]:
    """The stored features; a clear error when the file is missing or from another layout."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{path}: cannot read the anchor models' features ({exc}); "
            "regenerate with: python -m dyno_compile.search.device_features"
        ) from None
    if data.get("version") != FEATURES_VERSION or data.get("classes") != list(CLASSES):
        raise InputError(f"{path}: stored with another layout; regenerate it: python -m {__name__}")
    return {m: Features.from_dict(d) for m, d in data["models"].items()}


if __name__ == "__main__":
    for name, f in write_features().items():
        t = f.totals()
        print(f"{name}: {len(f)} nodes, {sum(v for k, v in t.items() if k.endswith('gflop')):.3f} GFLOP")
    print(f"wrote {FEATURES_FILE}")
