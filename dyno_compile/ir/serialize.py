"""Save and load graphs: structure as JSON, weights as ``.npz``; never pickle.

``save(graph, "m")`` writes ``m.json`` and ``m.npz``. Loading rebuilds the graph through
the same checks as building it (known ops, inputs that exist, no cycle, declared types
equal to inferred types), so a hand-edited or corrupt file fails with a clear error.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from dyno_compile.errors import GraphError
from dyno_compile.ir.graph import Graph
from dyno_compile.ir.node import CONST_OP, INPUT_OP
from dyno_compile.ir.types import TensorType

FORMAT = "dyno-graph"
VERSION = 1


def graph_to_dict(graph: Graph) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "name": graph.name,
        "nodes": [
            {
                "name": n.name,
                "op": n.op,
                "inputs": list(n.inputs),
                "attrs": n.attrs,
                "shape": list(n.shape),
                "dtype": n.dtype,
                "meta": n.meta,
            }
            for n in graph.nodes
        ],
        "outputs": list(graph.outputs),
    }


def graph_from_dict(data: Mapping[str, Any], params: Mapping[str, np.ndarray]) -> Graph:
    if data.get("format") != FORMAT:
        raise GraphError(f"not a dyno graph (format {data.get('format')!r}, expected {FORMAT!r})")
    if data.get("version") != VERSION:
        raise GraphError(f"graph format version {data.get('version')!r} is not supported (this build reads {VERSION})")
    entries = data.get("nodes")
    if not isinstance(entries, list):
        raise GraphError("graph file has no 'nodes' list")
    by_name: dict[str, Mapping[str, Any]] = {}
    for e in entries:
        _check_entry(e)
        if e["name"] in by_name:
            raise GraphError(f"node name {e['name']!r} appears twice")
        by_name[e["name"]] = e
    deps = nx.DiGraph()
    for pos, e in enumerate(entries):
        deps.add_node(e["name"], pos=pos)
        for i in e["inputs"]:
            if i not in by_name:
                raise GraphError(f"node {e['name']!r} ({e['op']}): input {i!r} does not exist (dangling input)")
            deps.add_edge(i, e["name"])
    try:
        order = list(nx.lexicographical_topological_sort(deps, key=lambda n: deps.nodes[n]["pos"]))
    except nx.NetworkXUnfeasible:
        cycle = " -> ".join(u for u, _ in nx.find_cycle(deps))
        raise GraphError(f"graph has a cycle: {cycle}") from None

    graph = Graph(data.get("name", "model"))
    for name in order:
        e = by_name[name]
        declared = TensorType(tuple(e["shape"]), e["dtype"])
        if e["op"] == INPUT_OP:
            node = graph.add_input(name, declared.shape, declared.dtype)
        elif e["op"] == CONST_OP:
            if name not in params:
                raise GraphError(f"const node {name!r} has no weight in the parameter file")
            node = graph.add_const(name, params[name])
        else:
            node = graph.add(e["op"], e["inputs"], e.get("attrs", {}), name=name)
        if node.type != declared:
            raise GraphError(
                f"node {name!r} ({e['op']}): declared type {declared} but its inputs give {node.type} (shape mismatch)"
            )
        node.meta.update(e.get("meta", {}))
    missing = [o for o in data.get("outputs", []) if o not in graph]
    if missing:
        raise GraphError(f"graph outputs {missing} are not nodes of the graph")
    graph.set_outputs(data.get("outputs", []))
    return graph


def _check_entry(e: Any) -> None:
    required = {"name": str, "op": str, "inputs": list, "shape": list, "dtype": str}
    if not isinstance(e, dict):
        raise GraphError(f"node entry {e!r} is not an object")
    for key, typ in required.items():
        if not isinstance(e.get(key), typ):
            raise GraphError(f"node entry {e.get('name', '?')!r}: field {key!r} missing or not a {typ.__name__}")


def save(graph: Graph, stem: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.npz``; each appears whole or not at all."""
    stem = Path(stem)
    structure = json.dumps(graph_to_dict(graph), indent=1, allow_nan=True)
    json_path, npz_path = stem.with_suffix(".json"), stem.with_suffix(".npz")
    # numpy's savez stub lets **kwds collide with its allow_pickle: bool keyword, so a dict of arrays is refused
    _atomic_write(npz_path, lambda f: np.savez(f, **graph.params))  # type: ignore[arg-type]
    _atomic_write(json_path, lambda f: f.write(structure.encode()))
    return json_path, npz_path


def load(stem: str | os.PathLike) -> Graph:
    stem = Path(stem)
    json_path, npz_path = stem.with_suffix(".json"), stem.with_suffix(".npz")
    try:
        data = json.loads(json_path.read_text())
    except FileNotFoundError:
        raise GraphError(f"{json_path}: no such graph file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GraphError(f"{json_path}: not valid JSON: {exc}") from None
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            params = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise GraphError(f"{npz_path}: weights file is missing") from None
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise GraphError(f"{npz_path}: not a readable .npz weights file: {exc}") from None
    return graph_from_dict(data, params)


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
