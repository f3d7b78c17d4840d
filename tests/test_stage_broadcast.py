"""The staged broadcast operand of NEON's register tiles (``targets/stage_broadcast.py``,
``stage_broadcast``): the arm64 schedule stages it in every direct and Winograd tile,
and the same transformation, built for this machine (where it runs), computes what the
unstaged schedule computes on every kind of tile (direct, strided, dilated, pointwise,
7-wide, Winograd); a tile with too few reduction steps to pay for the buffer, or a
7-wide run, is left alone; the host's own schedule does not stage (its TIR is unchanged)."""

from __future__ import annotations

import pytest
from test_blocked_conv import BLOCKED_CASES
from test_targets import check, conv_graph

from dyno_compile.targets import get_target
from dyno_compile.targets.compile import fused_module
from dyno_compile.targets.schedule import config_for, schedule_module

CASES = {
    **BLOCKED_CASES,
    # large enough for Winograd F(4x4, 3x3), and enough input channels (reduction steps) for
    # staging its product's tile to pay for the buffer
    "winograd": dict(x=(1, 128, 28, 28), w=(128, 128, 3, 3), bias=True, attrs={"padding": ((1, 1), (1, 1))}),
}


def _local_buffers(graph, target: str, **overrides) -> dict[str, int]:
    """Tiled or Winograd function -> its ``local`` buffers (accumulator, staged operand)."""
    spec = get_target(target)
    tvm_target = spec.tvm_target()
    mod, report = schedule_module(fused_module(graph, spec), tvm_target, cfg=config_for(tvm_target, **overrides))
    assert not report.fallbacks, report.functions
    return {
        gv.name_hint: func.script().count('scope="local"')
        for gv, func in mod.functions_items()
        if report.functions.get(gv.name_hint) in ("tiled", "winograd")
    }


@pytest.mark.parametrize("case", list(CASES))
def test_staged_tiles_compute_the_same(case, rng):
    g = conv_graph(rng, **CASES[case])
    host = get_target("host").tvm_target()
    check(g, [rng.standard_normal(CASES[case]["x"]).astype("float32")], schedule_config=config_for(host))
    check(
        g,
        [rng.standard_normal(CASES[case]["x"]).astype("float32")],
        schedule_config=config_for(host, stage_broadcast=True),
    )


#: Whether each case's tile is staged on arm64: where the loads saved pay for the buffer;
#: not a 7-wide run (4 + 2 + 1 lanes), not 24 steps of a narrow pointwise product.
STAGED = {"3x3_13wide": 1, "stride2_asym": 1, "winograd": 1, "3x3_7wide": 0, "pointwise_32wide": 0}


@pytest.mark.parametrize("case", list(STAGED))
def test_arm64_stages_where_it_pays_and_host_does_not(case, rng):
    g = conv_graph(rng, **CASES[case])
    assert config_for(get_target("arm64").tvm_target()).stage_broadcast
    assert not config_for(get_target("host").tvm_target()).stage_broadcast
    staged, plain = _local_buffers(g, "arm64"), _local_buffers(g, "arm64", stage_broadcast=False)
    assert staged and staged.keys() == plain.keys()
    assert all(staged[f] == plain[f] + STAGED[case] for f in staged), (staged, plain)
