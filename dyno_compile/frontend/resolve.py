"""Turn a MODEL argument (zoo name, ``.onnx`` path, or ``module:function``) into a Graph.

``module:function`` names a JAX model of the user's: calling ``function()`` with no
arguments returns ``(fn, params, example_input)``, where ``fn(params, x)`` is the model;
the example's first axis is the batch, which ``batch`` replaces.
This keeps the CLI free of any guessing about how a user's weights are made.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import numpy as np

from dyno_compile import zoo
from dyno_compile.errors import FrontendError, InputError
from dyno_compile.frontend.jax_import import from_jax
from dyno_compile.frontend.onnx_import import from_onnx
from dyno_compile.ir import Graph


def load_model(
    spec: str, *, batch: int | None = None, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> Graph:
    """Import the model that ``spec`` names. ``batch``: the input batch (default: an ONNX
    file's own fixed batch, else 1); ``input_shapes``: whole input shapes by name, which
    bind an ONNX file's dynamic dimensions."""
    if spec.endswith(".onnx") or Path(spec).is_file():
        path = Path(spec)
        if not path.is_file():
            raise FrontendError(f"{path}: no such ONNX file")
        return from_onnx(path, batch=batch, input_shapes=input_shapes)
    if input_shapes:
        raise InputError(
            f"{spec}: --input-shape binds the dynamic dimensions of an ONNX file; this model's "
            "input shape is fixed by its definition (use --batch for the batch)"
        )
    batch = batch or 1
    if ":" in spec:
        return _load_jax_entry_point(spec, batch)
    if spec in zoo.list_models():
        model = zoo.get_model(spec, batch=batch)
        return from_jax(model.fn, model.params, model.random_input(), name=spec)
    raise InputError(
        f"model {spec!r} is not a zoo model ({', '.join(zoo.list_models())}), "
        "an existing .onnx file, or module:function"
    )


def _load_jax_entry_point(spec: str, batch: int) -> Graph:
    module_name, _, attr = spec.partition(":")
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FrontendError(f"{spec}: cannot import module {module_name!r}: {exc}") from exc
    finally:
        sys.path.pop(0)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise FrontendError(f"{spec}: module {module_name!r} has no callable {attr!r}")
    made = factory()
    if not (isinstance(made, tuple) and len(made) == 3 and callable(made[0])):
        raise FrontendError(f"{spec}: {attr}() must return (fn, params, example_input), got {type(made).__name__}")
    fn, params, example = made
    shape = np.shape(example)
    if not shape:
        raise FrontendError(f"{spec}: the example input must have a batch axis, got a scalar")
    rebatched = jax.ShapeDtypeStruct((batch, *shape[1:]), getattr(example, "dtype", np.float32))
    return from_jax(fn, params, rebatched, name=getattr(fn, "__name__", attr))
