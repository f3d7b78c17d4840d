"""The accuracy simulation's memory does not grow with the number of calibration samples.

A 224x224 search on 200 images peaked at 5.4 GB because every sample's activations at a
cut were held at once (issue 20 item 6). This counts what the simulator allocates
(``tracemalloc`` sees every NumPy array; the segments hand their outputs over as NumPy
copies so that it sees them too) while it evaluates every cut of ResNet-20 on 16 and on 64
samples: with streaming the two peaks are the same cache and batch in flight; holding a
cut for every sample would add 48 samples' worth of it.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from conftest import shared_data
from dyno_compile.frontend.resolve import load_model
from dyno_compile.ir import CONST_OP
from dyno_compile.passes import run_passes
from dyno_compile.search import accuracy
from dyno_compile.search.accuracy import AccuracySimulator
from dyno_compile.search.calibration import CalibrationSet, default_calibration

BATCH = 8
BUDGET = 256 << 10


@pytest.fixture(scope="module")
def simulator() -> AccuracySimulator:
    shared_data("cifar10", "test_932.npz")
    graph = run_passes(load_model("resnet20"))
    calibration: CalibrationSet = default_calibration("resnet20", graph.inputs[0].shape).head(64)
    jitted = AccuracySimulator(graph, calibration, batch=BATCH)

    def segments(k: int, xs: tuple) -> tuple:
        return tuple(np.array(o) for o in jitted._segment_fn(k)(xs))

    return AccuracySimulator(graph, calibration, batch=BATCH, cache_bytes=BUDGET, segments=segments)


def _peak_bytes(sim: AccuracySimulator) -> int:
    """Most bytes allocated at once above the start while ``sim`` scores every cut at two widths."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for cut in sim.cuts:
            for bits in (4, 8):
                sim.evaluate(cut.position, bits)
            assert sim.cached_bytes <= BUDGET
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_peak_memory_is_independent_of_the_number_of_samples(simulator: AccuracySimulator) -> None:
    _peak_bytes(simulator.head(BATCH))  # compile every segment first: tracing allocates too
    few, many = _peak_bytes(simulator.head(16)), _peak_bytes(simulator.head(64))
    per_sample = max(c.nbytes for c in simulator.cuts)  # the largest cut's tensors of one sample
    # One cut held for every sample would add 48 samples' worth (the old simulator: +6.3 MB);
    # what stays is noise of a few samples' worth (Python and JAX bookkeeping).
    assert many - few < 16 * per_sample, (few, many, per_sample)
    assert many < BUDGET + 4 * BATCH * per_sample  # the cache and a batch or two in flight


def test_the_default_batch_holds_the_largest_activation_within_its_budget(
    simulator: AccuracySimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of 64 224x224 images held ~300 MB per early tensor: the default batch is sized
    by the model's largest activation instead (ResNet-20's 64 KB fits the cap of 64)."""
    graph, calibration = simulator.graph, simulator.calibration
    largest = max(n.type.nbytes for n in graph.nodes if n.op != CONST_OP)
    assert AccuracySimulator(graph, calibration)._batch == accuracy.MAX_BATCH
    monkeypatch.setattr(accuracy, "BATCH_BYTES", 4 * largest + 1)
    assert AccuracySimulator(graph, calibration)._batch == 4
    monkeypatch.setattr(accuracy, "BATCH_BYTES", 1)
    assert AccuracySimulator(graph, calibration)._batch == 1
