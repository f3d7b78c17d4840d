"""Errors every layer raises, so callers can catch one family and users read one style.

Each message names the thing at fault (model, node, op, input, file) and, where it can,
what to do next.
"""


class DynoError(Exception):
    """Base of all errors raised on purpose by dyno-compile."""


class GraphError(DynoError):
    """The graph is malformed: dangling input, unknown op, cycle, type mismatch."""


class FrontendError(DynoError):
    """A model could not be imported; nothing partial is returned."""


class UnsupportedOpError(FrontendError):
    """The model uses an operator that has no translation to the IR."""

    def __init__(self, op: str, node: str, source: str, hint: str = "") -> None:
        self.op = op
        self.node = node
        msg = f"{source}: unsupported operator {op!r} at node {node!r}"
        super().__init__(msg + (f"; {hint}" if hint else ""))


class InputError(DynoError):
    """Data given to a graph (or a loader) does not fit what it expects."""


class DynoWarning(UserWarning):
    """Something the user should know that does not stop the work: a figure measured under
    other load, say. The CLI prints each as one ``warning:`` line."""
