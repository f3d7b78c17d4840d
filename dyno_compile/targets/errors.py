"""The errors of :mod:`dyno_compile.targets`, in one module below every other one of the
package, so that the target registry, the lowering and the cut kernels raise the same
classes without importing each other."""

from __future__ import annotations

from dyno_compile.errors import DynoError

__all__ = ["LoweringError", "TargetError"]


class TargetError(DynoError):
    """Unknown target name, or a target that cannot do what was asked (run a cross build)."""


class LoweringError(DynoError):
    """A graph cannot be lowered to Relax (an op without converter, or a converter failed)."""
