"""Profiling a real resnet20 artifact (host libraries): every function timed, configuration
times added up from the right functions, the same timings over a loopback TVM RPC tracker
and server, bounded failures for unreachable trackers and unknown keys, and labelled,
calibrated roofline estimates for targets with no hardware here."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import replace

import numpy as np
import pytest

from dyno_compile.artifact.store import ArtifactError
from dyno_compile.configs import Config
from dyno_compile.errors import DynoError, InputError
from dyno_compile.progress import silent
from dyno_compile.search import pipeline
from dyno_compile.search.calibration import CalibrationSet
from dyno_compile.search.estimate import estimate_library, function_costs
from dyno_compile.search.pipeline import SearchOptions, side_profiles
from dyno_compile.search.profile import (
    MAX_PASSES,
    SIDES,
    LibraryProfile,
    ProfileError,
    UnsteadyProfile,
    config_times,
    profile_library,
    profile_runner,
)
from dyno_compile.search.rpc import EMULATED_KEY_PREFIX, RPCError, local_rpc, profile_library_rpc, rpc_source
from dyno_compile.targets import get_target


@pytest.fixture(scope="module")
def profiled(artifact):
    """Both host libraries profiled with the default settings, and how long each took."""
    profiles, took = {}, {}
    for side in SIDES:
        t = time.perf_counter()
        profiles[side] = profile_library(artifact, side)
        took[side] = time.perf_counter() - t
    return profiles, took


@pytest.fixture(scope="module")
def profiles(profiled):
    return profiled[0]


def _functions(artifact, side: str) -> set[str]:
    return set(artifact.manifest["libraries"][f"{side}/host.so"]["module"]["functions"])


def _segments(artifact, indices) -> list[str]:
    return [artifact.segments[i]["function"] for i in indices]


def _middle_split(artifact) -> dict:
    splits = [c for c in artifact.cuts if c["kind"] == "split"]
    return splits[len(splits) // 2]


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_function_of_both_libraries_gets_a_positive_time(artifact, profiled):
    profiles, took = profiled
    for side in SIDES:
        p = profiles[side]
        assert set(p.seconds) == _functions(artifact, side) and len(p.seconds) >= 40
        assert all(s > 0 for s in p.seconds.values())
        assert (p.side, p.target, p.source, p.repeat) == (side, "host", "measured:host", 5)
        assert took[side] < 60, f"profiling the {side} library took {took[side]:.0f} s"
    assert {f for f in profiles["device"].seconds if not f.startswith("segment_")} == {
        f for f in _functions(artifact, "device") if f.startswith("pack_")
    }


def test_profiles_round_trip_and_never_lose_their_label(profiles):
    p = profiles["device"]
    back = LibraryProfile.from_dict(json.loads(json.dumps(p.to_dict())))
    assert back == p
    assert "measured:host" in str(p) and "measured:host" in repr(p)
    for bad in ("", "host", "guessed:host"):
        with pytest.raises(ProfileError, match="where it came from"):
            LibraryProfile("device", "host", bad, dict(p.seconds))
    stored = p.to_dict()
    del stored["source"]
    with pytest.raises(ProfileError, match="source"):
        LibraryProfile.from_dict(stored)
    with pytest.raises(ProfileError, match="non-positive"):
        LibraryProfile("device", "host", "measured:host", {"segment_0": 0.0})


def test_config_times_add_up_the_functions_each_side_runs(artifact, profiles):
    dev, cloud = profiles["device"].seconds, profiles["cloud"].seconds
    cuts = artifact.cuts
    first, last = cuts[0], cuts[-1]
    middle = _middle_split(artifact)
    assert (first["kind"], last["kind"]) == ("cloud-only", "device-only")

    def times(cut, bits):
        return config_times(artifact, profiles["device"], profiles["cloud"], Config(cut["position"], bits))

    d, c, sources = times(first, "8")  # the device only packs the input
    (k,) = first["kernels"]["8"]
    assert d == pytest.approx(dev[k["pack"]])
    assert c == pytest.approx(cloud[k["unpack"]] + sum(cloud[f] for f in _segments(artifact, first["cloud_segments"])))
    assert sources == {"device_s": "measured:host", "cloud_s": "measured:host"}

    (k,) = middle["kernels"]["8"]
    head = sum(dev[f] for f in _segments(artifact, middle["device_segments"]))
    tail = sum(cloud[f] for f in _segments(artifact, middle["cloud_segments"]))
    assert 0 < head and 0 < tail
    assert times(middle, "8")[:2] == pytest.approx((head + dev[k["pack"]], cloud[k["unpack"]] + tail))
    assert times(middle, "float32")[:2] == pytest.approx((head, tail))  # sent as is: no kernels
    (k,) = middle["kernels"]["float16"]  # a cast each way
    assert times(middle, "float16")[:2] == pytest.approx((head + dev[k["pack"]], cloud[k["unpack"]] + tail))

    d, c, _ = times(last, "8")  # nothing is sent, whatever the width
    assert (d, c) == (pytest.approx(sum(dev[f] for f in _segments(artifact, range(len(artifact.segments))))), 0)

    with pytest.raises(ProfileError, match="no kernels for bits '3'"):
        times(middle, "3")
    with pytest.raises(ProfileError, match="expected a device profile"):
        config_times(artifact, profiles["cloud"], profiles["cloud"], Config(middle["position"]))


def test_rpc_loopback_times_agree_with_local_times(artifact, profiles):
    """The remote time evaluator runs the same code on the same cores as the local one, so
    the figures must agree within this machine's noise. Shared by several engineers, it
    swings by 10-50 % between minutes; the device and cloud libraries hold the same
    segments, timed at different moments, and a third local profile is taken right after
    the RPC one: the three local sums bracket that noise, and the RPC sum must fall within
    30 % of the bracket."""
    with local_rpc(f"dyno-test-{os.getpid()}") as remote:
        t = time.perf_counter()
        with pytest.raises(RPCError, match="no server with key 'no-such-board'.*registered keys: dyno-test"):
            profile_library_rpc(artifact, "device", "host", tracker=remote.tracker, key="no-such-board", timeout=3)
        assert time.perf_counter() - t < 5
        rp = profile_library_rpc(artifact, "device", "host", tracker=remote.tracker, key=remote.key)
    after = profile_library(artifact, "device")
    assert rp.source == f"measured:rpc:{remote.key}" and rp.target == "host"
    assert set(rp.seconds) == set(profiles["device"].seconds) and all(s > 0 for s in rp.seconds.values())
    segments = _segments(artifact, range(len(artifact.segments)))
    local = [p.total(segments) for p in (profiles["device"], profiles["cloud"], after)]
    remote_sum = rp.total(segments)
    print(
        f"\nsum over {len(segments)} segments: rpc {remote_sum * 1e3:.3f} ms; local (device, cloud, after) "
        f"{', '.join(f'{s * 1e3:.3f}' for s in local)} ms"
    )
    assert min(local) / 1.3 <= remote_sum <= max(local) * 1.3, (remote_sum, local)


def test_unreachable_tracker_fails_fast_with_a_clear_error(artifact):
    address = f"127.0.0.1:{_closed_port()}"
    t = time.perf_counter()
    with pytest.raises(RPCError, match=f"cannot reach TVM RPC tracker {address}"):
        profile_library_rpc(artifact, "device", "host", tracker=address, key="board", timeout=2)
    assert time.perf_counter() - t < 5
    with pytest.raises(InputError, match="host:port"):
        profile_library_rpc(artifact, "device", "host", tracker="localhost", key="board")
    with pytest.raises(ArtifactError, match="no device library for target 'arm64'"):  # before any network
        profile_library_rpc(artifact, "device", "arm64", tracker=address, key="board")
    assert issubclass(RPCError, DynoError) and issubclass(ArtifactError, DynoError)


def test_estimates_are_labelled_positive_and_rank_targets(artifact, profiles):
    costs = function_costs(artifact, "device")
    big = sorted((f for f in costs if f.startswith("segment_")), key=lambda f: costs[f][0])[-5:]
    for side in SIDES:
        arm = estimate_library(artifact, profiles[side], "arm64")
        gpu = estimate_library(artifact, profiles[side], "cuda")
        for est, name in ((arm, "arm64"), (gpu, "cuda-sm80")):
            assert (est.side, est.target, est.source) == (side, name, f"estimated:roofline:{name}")
            assert est.estimated and est.calibration == "measured:host" and est.repeat is None
            assert f"estimated:roofline:{name}" in str(est) and f"estimated:roofline:{name}" in repr(est)
            assert set(est.seconds) == set(profiles[side].seconds) and all(s > 0 for s in est.seconds.values())
            assert LibraryProfile.from_dict(json.loads(json.dumps(est.to_dict()))) == est
        for f in big:
            assert arm.time(f) > 10 * gpu.time(f), f
    middle = _middle_split(artifact)["position"]
    arm, gpu = (estimate_library(artifact, profiles[s], t) for s, t in (("device", "arm64"), ("cloud", "cuda")))
    assert config_times(artifact, arm, gpu, Config(middle, "8"))[2] == {
        "device_s": "estimated:roofline:arm64",
        "cloud_s": "estimated:roofline:cuda-sm80",
    }


def test_the_calibration_is_applied(artifact, profiles):
    """Each function keeps the fraction of its roofline measured on the host: estimating the
    host gives back the measurement, and any target's estimate is the measurement scaled
    by the two rooflines' ratio (not the bare roofline)."""
    p = profiles["device"]
    assert estimate_library(artifact, p, "host").seconds == pytest.approx(p.seconds, rel=1e-12)
    arm, host = get_target("arm64"), get_target("host")
    est = estimate_library(artifact, p, arm)
    macs, nbytes = function_costs(artifact, "device")["segment_2"]
    roof = {s.name: max(2 * macs / (s.peak_gflops * 1e9), nbytes / (s.mem_bandwidth_gbs * 1e9)) for s in (arm, host)}
    assert est.time("segment_2") == pytest.approx(p.time("segment_2") * roof["arm64"] / roof["host"], rel=1e-12)
    with pytest.raises(ProfileError, match="not an estimate"):
        estimate_library(artifact, est, "cuda")


class _LoadedRunner:
    """The real runner's functions, timed with scripted figures: each pass over the library
    reads ``1 ms x factors[pass]`` per function, as other load coming and going would, and
    one repeat of each call 50x that (a profile takes the median of the repeats)."""

    def __init__(self, runner, factors: list[float]) -> None:
        self.module, self.factors, self.calls = runner.module, factors, 0

    def time(self, function: str, inputs, *, repeat: int, min_repeat_ms: int) -> np.ndarray:
        n = len(self.module.functions)
        factor = self.factors[self.calls // n]
        self.calls += 1
        return 1e-3 * factor * np.r_[np.ones(repeat - 1), 50.0]


def test_a_pass_slowed_by_passing_load_is_retimed_and_dropped(artifact):
    runner = _LoadedRunner(artifact.runner("device", "host"), [6.0, 1.1, 1.0])
    profile = profile_runner(runner, "device", "measured:host")
    assert runner.calls == 3 * len(runner.module.functions)  # 6 vs 1.1 disagree; 1.1 vs 1.0 agree
    assert set(profile.seconds.values()) == {1e-3}  # each function keeps its fastest pass


def test_passes_that_never_agree_give_a_profile_marked_unsteady(artifact):
    """A busy machine must not throw a build's work away: the profile is kept, each function
    at its fastest pass, and it says it was taken under load — in a warning, in its label
    and in its stored dict."""
    factors = [2.0**k for k in range(MAX_PASSES)]
    runner = _LoadedRunner(artifact.runner("device", "host"), factors)
    with pytest.warns(UnsteadyProfile, match=f"{MAX_PASSES} timing passes never agreed.*quiet"):
        profile = profile_runner(runner, "device", "measured:host")
    assert runner.calls == MAX_PASSES * len(runner.module.functions)
    assert set(profile.seconds.values()) == {1e-3}
    assert not profile.steady and profile.spread == pytest.approx(factors[-1])
    assert f"unsteady: timing passes spread {factors[-1]:.2f}x" in profile.label
    back = LibraryProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert back == profile and back.label == profile.label


def test_an_estimate_from_an_unsteady_host_says_so_where_the_search_shows_its_times(artifact):
    seconds = dict.fromkeys(_functions(artifact, "device"), 1e-3)
    host, steady = (
        LibraryProfile("device", "host", "measured:host", seconds, spread=3.0, steady=s) for s in (False, True)
    )
    arm = estimate_library(artifact, host, "arm64")
    shown = pipeline._shown(arm, [host, arm])
    assert shown == f"{arm.label} (from {host.label})" and "unsteady: timing passes spread 3.00x" in shown
    assert pipeline._shown(arm, [steady, arm]) == arm.label
    assert pipeline._shown(host, [host]) == host.label


def test_steady_passes_warn_nothing(artifact, recwarn):
    runner = _LoadedRunner(artifact.runner("device", "host"), [1.0, 1.1])
    profile = profile_runner(runner, "device", "measured:host")
    assert profile.steady and profile.spread == pytest.approx(1.1)
    assert "unsteady" not in profile.label
    assert not [w for w in recwarn if issubclass(w.category, UnsteadyProfile)]


def test_an_emulated_board_is_labelled_and_never_ranks_by_its_times_unless_asked(artifact, profiles, monkeypatch):
    """A server under an 'emulated-' key (the project's QEMU board) is timed and recorded as
    emulated:rpc:<key>; the search then ranks by the host-based estimate (last profile)
    unless ``emulated_times`` asks for the emulated figures, and an emulation is never a
    calibration for an estimate. (The host profile is the module's, not taken again.)"""
    monkeypatch.setattr(pipeline, "profile_library", lambda *args: profiles["device"])
    calibration = CalibrationSet(np.zeros((1, *artifact.graph.inputs[0].shape[1:]), np.float32), None, "zeros")
    with local_rpc(f"{EMULATED_KEY_PREFIX}test-{os.getpid()}") as remote:
        options = SearchOptions(calibration, rpc_tracker=remote.tracker, rpc_key=remote.key)
        default = side_profiles(artifact, "device", "host", options, silent)
    monkeypatch.setattr(pipeline, "profile_library_rpc", lambda *args, **kwargs: default[1])
    asked = side_profiles(artifact, "device", "host", replace(options, emulated_times=True), silent)
    assert [p.source for p in default] == ["measured:host", f"emulated:rpc:{remote.key}", "estimated:roofline:host"]
    assert default[1].emulated and "emulated:rpc" in default[1].label and not default[2].emulated
    assert [p.source for p in asked] == ["measured:host", f"emulated:rpc:{remote.key}"]
    back = LibraryProfile.from_dict(json.loads(json.dumps(default[1].to_dict())))
    assert back.emulated and back == default[1]
    with pytest.raises(ProfileError, match="not an estimate or an emulation"):
        estimate_library(artifact, default[1], "arm64")
    assert rpc_source("rpi5") == "measured:rpc:rpi5"


def test_a_board_target_with_no_board_ranks_by_the_anchored_estimate(artifact, profiles, monkeypatch):
    """``--profile-device rpi4`` without an RPC board: the search's device profiles are the host
    measurement and the estimate anchored on published rows, which names them; stored and
    read back with its label."""
    monkeypatch.setattr(pipeline, "profile_library", lambda *args: profiles["device"])
    calibration = CalibrationSet(np.zeros((1, *artifact.graph.inputs[0].shape[1:]), np.float32), None, "zeros")
    host, board = side_profiles(artifact, "device", "rpi4", SearchOptions(calibration), silent)
    assert host.source == "measured:host" and board.source == "estimated:anchored:rpi4"
    assert board.target == "rpi4" and set(board.seconds) == set(host.seconds)
    assert "rows: rpi4 ncnn 4t" in board.calibration and "measured:host" in board.calibration
    back = LibraryProfile.from_dict(json.loads(json.dumps(board.to_dict())))
    assert back == board and back.estimated and "estimated:anchored:rpi4" in str(back)
    d, _, sources = config_times(artifact, board, profiles["cloud"], Config(max(c["position"] for c in artifact.cuts)))
    assert d == pytest.approx(sum(board.seconds[s["function"]] for s in artifact.segments)) and d > 0
    assert sources["device_s"] == "estimated:anchored:rpi4"
