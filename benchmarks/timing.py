"""The wall-clock timing loop the benchmark scripts share for code TVM's time_evaluator
cannot time (jax.jit, NumPy, ONNX Runtime)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def median_seconds(call: Callable[[], object], *, repeat: int, min_ms: float, warmup: int = 3) -> float:
    """Median seconds per ``call()`` over ``repeat`` rounds of at least ``min_ms`` each.

    ``call`` must finish its work before returning (``block_until_ready`` for JAX).
    """
    for _ in range(warmup):
        call()
    t0 = time.perf_counter()
    call()
    one = max(time.perf_counter() - t0, 1e-7)
    number = max(1, int(min_ms / 1e3 / one))
    results = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            call()
        results.append((time.perf_counter() - t0) / number)
    return float(np.median(results))
