"""One operator node of the graph IR.

A node is small, as in torch.fx: an op name from the registry, JSON-able attributes,
ordered input names, and the type of its single output. The output tensor is named after
the node, so "node" and "tensor" share one namespace. Facts computed by passes (costs,
quantization parameters) go in ``meta``, never in new attributes on the object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dyno_compile.ir.types import Shape, TensorType

#: Ops that hold no computation: graph inputs and named weights.
INPUT_OP = "input"
CONST_OP = "const"


def freeze_attr(value: Any) -> Any:
    """Normalise an attribute value to immutable, JSON-compatible Python types.

    Lists become tuples (so a saved-and-loaded graph compares equal) and NumPy scalars
    become Python numbers.
    """
    if isinstance(value, (list, tuple)):
        return tuple(freeze_attr(v) for v in value)
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"attribute value {value!r} of type {type(value).__name__} is not JSON-able")


@dataclass(eq=False)
class Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict[str, Any]
    type: TensorType
    meta: dict[str, Any] = field(default_factory=dict)
    #: Sort key giving the deterministic program order among independent nodes.
    order_key: tuple[int, ...] = (0,)

    @property
    def shape(self) -> Shape:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def is_compute(self) -> bool:
        """True for nodes that do work at run time (not graph inputs or weights)."""
        return self.op not in (INPUT_OP, CONST_OP)

    def __repr__(self) -> str:
        args = ", ".join(self.inputs)
        attrs = "".join(f", {k}={v!r}" for k, v in self.attrs.items())
        return f"%{self.name}: {self.type} = {self.op}({args}{attrs})"
