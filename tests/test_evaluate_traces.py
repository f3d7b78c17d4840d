"""The evaluation's network traces: every real file of the three sets reads, the measured
uplinks keep the data README's figures, throughput logs keep their bytes, and bad files
fail clearly."""

from __future__ import annotations

import numpy as np
import pytest

from dyno_compile.errors import InputError
from dyno_compile.evaluate.traces import (
    DOWNLINK,
    TRACE_SETS,
    UPLINK,
    log_to_trace,
    mean_rate,
    read_trace,
    trace_files,
    trace_set,
)
from dyno_compile.runtime.link import PACKET_BYTES, UplinkTrace
from tests.conftest import shared_data

#: The data README's uplink means (Mbit/s).
README_UPLINK_MBIT = {
    "Verizon-EVDO-driving.up": 0.84,
    "TMobile-UMTS-driving.up": 0.94,
    "ATT-LTE-driving-2016.up": 1.89,
    "Verizon-LTE-short.up": 5.95,
}


def _log(path):
    table = np.loadtxt(path, ndmin=2)
    return table[:, 0], table[:, 1]


def _check_bytes_per_interval(trace: UplinkTrace, times_s: np.ndarray, rates: np.ndarray) -> None:
    """Each sample interval (t[i-1], t[i]] carries rate x duration bytes: the opportunities
    stamped in it, to within the packet carried over at the ends and, where a bound is not
    a whole millisecond, the millisecond it shares with a neighbour."""
    t_ms = (times_s - times_s[0]) * 1000.0
    expected = rates[1:] * np.diff(t_ms) * 125.0  # Mbit/s x ms -> bytes
    # opportunity m delivers the bytes arriving in (m, m + 1] ms
    bounds = np.ceil(t_ms - 1e-6)
    got = np.diff(np.searchsorted(trace.opportunities_ms, bounds, side="left")) * PACKET_BYTES
    shared = (np.abs(bounds - t_ms) > 1e-6).astype(float)  # a bound inside a millisecond
    neighbours = np.maximum.reduce([rates[1:], np.r_[rates[2:], 0.0], np.r_[0.0, rates[1:-1]]])
    tolerance = PACKET_BYTES + (shared[:-1] + shared[1:]) * neighbours * 125.0 + 1e-6
    assert np.all(np.abs(got - expected) <= tolerance)
    total = rates[1:] @ np.diff(t_ms) * 125.0
    assert abs(trace.opportunities_ms.size * PACKET_BYTES - total) < PACKET_BYTES
    assert trace.period_ms == int(np.ceil(t_ms[-1] - 1e-6))


def test_three_sets_name_their_files_and_label_directions():
    assert set(TRACE_SETS) == {"3g", "lte", "5g"}
    for name, ups in (
        ("3g", {"TMobile-UMTS-driving.up", "Verizon-EVDO-driving.up"}),
        ("lte", {"ATT-LTE-driving-2016.up", "Verizon-LTE-short.up"}),
        ("5g", set()),
    ):
        files = trace_files(name)
        assert {p.name for p, d in files if d == UPLINK} == ups
        assert [d for _, d in files][: len(ups)] == [UPLINK] * len(ups)  # uplinks first
        assert all(p.suffix != ".up" and "mahimahi" not in str(p) for p, d in files if d == DOWNLINK)
        assert "downlink throughput used as a plausible uplink process" in TRACE_SETS[name].description
    counts = {name: len(trace_files(name)) for name in TRACE_SETS}
    assert counts == {"3g": 2 + 142, "lte": 2 + 175, "5g": 121}


@pytest.mark.parametrize("name", sorted(TRACE_SETS))
def test_every_real_trace_file_reads(name):
    for path, _direction in trace_files(name):
        trace = read_trace(path)
        assert trace.name == f"{path.parent.name}/{path.name}"
        assert trace.opportunities_ms.size > 0 and trace.period_ms > 0
        assert 0 <= trace.opportunities_ms[0] and trace.opportunities_ms[-1] <= trace.period_ms
        assert mean_rate(trace) > 0


def test_mahimahi_uplink_means_match_the_readme():
    for file, mbit in README_UPLINK_MBIT.items():
        path = shared_data("traces", "mahimahi_cellular", file)
        trace = read_trace(path)
        reference = UplinkTrace.read(path)
        assert np.array_equal(trace.opportunities_ms, reference.opportunities_ms)
        assert trace.period_ms == reference.period_ms
        assert mean_rate(trace) * 8 / 1e6 == pytest.approx(mbit, rel=0.05)


@pytest.mark.parametrize(
    "parts",
    [
        ("norway_hsdpa_3g", "norway_bus_1"),
        ("norway_hsdpa_3g", "norway_ferry_5"),
        ("lumos5g_verizon", "4G", "4g_trace_driving_50015_dr"),
        ("lumos5g_verizon", "4G", "4g_trace_walking_50007_c"),  # repeats a second
        ("lumos5g_verizon", "5G", "5g_trace_100_walking"),
    ],
)
def test_throughput_logs_keep_bytes_per_interval(parts):
    path = shared_data("traces", *parts)
    times, rates = _log(path)
    trace = read_trace(path)
    assert np.all(np.diff(trace.opportunities_ms) >= 0)
    _check_bytes_per_interval(trace, times, rates)
    assert mean_rate(trace) == pytest.approx(rates[1:] @ np.diff(times) * 125_000 / (times[-1] - times[0]), rel=1e-3)


def test_log_conversion_on_hand_made_logs():
    # 1.2 Mbit/s for 1 s = 150 000 B = 100 packets evenly, 0 for 1 s, 0.6 Mbit/s for 0.5 s = 25 packets
    trace = log_to_trace("hand", np.array([5.0, 6.0, 7.0, 7.5]), np.array([9.0, 1.2, 0.0, 0.6]))
    assert trace.period_ms == 2500
    stamps = trace.opportunities_ms
    assert np.count_nonzero(stamps < 1000) == 100 and np.count_nonzero((stamps >= 1000) & (stamps < 2000)) == 0
    assert np.count_nonzero(stamps >= 2000) == 25
    assert np.all(np.diff(stamps[:100]) == 10)  # one packet every 10 ms, spread evenly
    assert stamps[0] == 9 and stamps[99] == 999
    # rates not a whole number of packets per interval carry the fraction on
    irregular = np.array([0.0, 0.55, 0.88, 1.35, 1.74])
    r = np.array([1.0, 4.79, 4.49, 0.0, 4.29])
    _check_bytes_per_interval(log_to_trace("x", irregular, r), irregular, r)


def test_formats_are_detected_with_tabs_or_spaces(tmp_path):
    tab, space, mm = tmp_path / "a" / "tab", tmp_path / "b" / "space", tmp_path / "c" / "trace.up"
    for p in (tab, space, mm):
        p.parent.mkdir()
    tab.write_text("0.0\t1.2\n1.0\t1.2\n2.0\t2.4\n\n")
    space.write_text("0 1.2\n1 1.2\n2 2.4\n")
    mm.write_text("".join(f"{m}\n" for m in range(10, 1001, 10)))
    a, b, c = read_trace(tab), read_trace(space), read_trace(mm)
    assert (a.name, b.name, c.name) == ("a/tab", "b/space", "c/trace.up")
    assert np.array_equal(a.opportunities_ms, b.opportunities_ms) and a.opportunities_ms.size == 300
    assert c.period_ms == 1000 and c.opportunities_ms.size == 100
    assert mean_rate(c) == pytest.approx(150_000.0)


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty"),
        ("\n  \n", "empty"),
        ("0 1 2\n1 1 2\n", "fields"),
        ("0\t1.0\n1\tfast\n", "line 2"),
        ("0 1.0\n1\n", "line 2"),
        ("5\n7 8\n", "one integer"),
        ("5\n1.5\n", "mahimahi"),
        ("10\n5\n", "mahimahi"),
        ("0 1.0\n", "two samples"),
        ("0 1.0\n2 1.0\n1 1.0\n", "decrease"),
        ("0 1.0\n1 -1.0\n", ">= 0"),
        ("0 1.0\n1 nan\n", "finite"),
        ("0 1.0\n1 0.0\n2 0.0\n", "less than one"),
        ("3 1.0\n3 1.0\n", "no time"),
    ],
)
def test_bad_files_raise_input_error(tmp_path, text, match):
    path = tmp_path / "bad"
    path.write_text(text)
    with pytest.raises(InputError, match=match):
        read_trace(path)


def test_unreadable_files_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot be read"):
        read_trace(tmp_path / "missing")
    with pytest.raises(InputError, match="cannot be read"):
        read_trace(tmp_path)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(InputError, match="cannot be read"):
        read_trace(binary)


def test_trace_set_subsets_are_deterministic():
    first = trace_set("lte", limit=4)
    again = trace_set("lte", limit=4, seed=0)
    assert [t.source for t in first] == [t.source for t in again]
    assert [t.direction for t in first] == [UPLINK, UPLINK, DOWNLINK, DOWNLINK]
    assert [t.source.name for t in first[:2]] == ["ATT-LTE-driving-2016.up", "Verizon-LTE-short.up"]
    assert all(t.set == "lte" and t.name == f"{t.source.parent.name}/{t.source.name}" for t in first)
    other = [t.source for t in trace_set("lte", limit=4, seed=1)]
    assert other[:2] == [t.source for t in first[:2]] and other != [t.source for t in first]
    assert [t.source.name for t in trace_set("3g", limit=1)] == ["TMobile-UMTS-driving.up"]
    five = trace_set("5g", limit=4, seed=3)
    assert len(five) == 4 and {t.direction for t in five} == {DOWNLINK}
    assert [t.source for t in five] == [t.source for t in trace_set("5g", limit=4, seed=3)]
    with pytest.raises(InputError, match="unknown trace set"):
        trace_set("wifi")
    with pytest.raises(InputError, match="limit"):
        trace_set("3g", limit=0)
