"""Rate–accuracy curves (issue 18 item 2): the Pareto and threshold arithmetic on hand-made
points, JALAD's Huffman size against a brute-force optimum, the width probing, a tiny real
run of the command on ResNet-20 and CIFAR-10, and bad input."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from dyno_compile.cli import main
from dyno_compile.datasets.imagenet import load_samples
from dyno_compile.errors import InputError
from dyno_compile.evaluate.jpeg import model_view, raw_images
from dyno_compile.evaluate.rate_accuracy import (
    ModelResult,
    Point,
    Sweep,
    check_models,
    check_thresholds,
    fewest_bytes,
    floor_for,
    huffman_bytes,
    huffman_lengths,
    lossless_codecs,
    pareto_front,
    probe_widths,
    threshold_table,
)
from dyno_compile.packing import CODEC_TABLE


def _p(method: str, b: float, acc: float, **where) -> Point:
    return Point(method, b, acc, where)


# --- Pareto front and the threshold table -----------------------------------------------------


def test_pareto_front_keeps_only_undominated_points():
    pts = [
        _p("ours", 100, 0.80, k=1),
        _p("ours", 50, 0.85, k=2),  # dominates k=1
        _p("ours", 200, 0.85, k=3),  # as accurate as k=2 for more bytes
        _p("ours", 300, 0.90, k=4),
        _p("ours", 300, 0.88, k=5),  # same bytes as k=4, less accurate
        _p("ours", 10, 0.10, k=6),
    ]
    front = pareto_front(pts)
    assert [p.where["k"] for p in front] == [6, 2, 4]
    assert pareto_front([]) == []


def test_fewest_bytes_and_threshold_table():
    float_acc = 0.90
    pts = [
        _p("ours", 40, 0.880, cut=3),  # 2 points down
        _p("ours", 60, 0.895, cut=4),  # 0.5 point down exactly
        _p("ours", 90, 0.899, cut=5),
        _p("jpeg", 500, 0.885, quality=50),  # 1.5 points down
        _p("jpeg", 800, 0.900, quality=90),
        _p("webp", 300, 0.890, quality=70),  # 1 point down exactly
        _p("png", 2000, 0.900),
        _p("float32-split", 4000, 0.900, cut=5),
    ]
    table = threshold_table(pts, float_acc, (2, 0.5, 1))
    assert list(table["ours"]) == [0.5, 1.0, 2.0]  # sorted
    assert table["ours"][0.5].where["cut"] == 4  # an exact tie counts as within
    assert table["ours"][2.0].where["cut"] == 3
    assert table["jpeg"][1.0].where["quality"] == 90 and table["jpeg"][2.0].where["quality"] == 50
    best = table["best image codec"]
    assert best[1.0].method == "webp" and best[0.5].method == "jpeg" and best[2.0].method == "webp"
    assert all(p.method != "png" for p in best.values())  # PNG is the lossless check, not a contender
    assert fewest_bytes(pts, 0.95) is None
    assert floor_for(0.9, 1.0) == pytest.approx(0.89)


def test_bad_thresholds_are_refused():
    for bad in ([], [-1], [math.inf], [True], ["1"]):
        with pytest.raises(InputError, match="thresholds"):
            check_thresholds(bad)
    assert check_thresholds([2, 1, 1, 0.5]) == (0.5, 1.0, 2.0)


# --- JALAD's Huffman coding -------------------------------------------------------------------


def _optimal_prefix_bits(counts: list[int]) -> int:
    """The fewest bits of any prefix code for these counts, by brute force over code lengths
    that satisfy Kraft's inequality (a prefix code with those lengths then exists)."""
    used = [c for c in counts if c]
    if len(used) == 1:
        return used[0]
    best = None
    for lengths in itertools.product(range(1, len(used)), repeat=len(used)):
        if sum(2.0**-l for l in lengths) <= 1:
            cost = sum(c * l for c, l in zip(used, lengths))
            best = cost if best is None else min(best, cost)
    return best


def test_huffman_is_the_optimal_prefix_code():
    rng = np.random.default_rng(7)
    for _ in range(40):
        n = int(rng.integers(2, 7))
        counts = [int(c) for c in rng.integers(0, 50, n)]
        if sum(1 for c in counts if c) < 1:
            continue
        lengths = huffman_lengths(counts)
        assert int(np.dot(counts, lengths)) == _optimal_prefix_bits(counts), counts
        assert all((c == 0) == (l == 0) for c, l in zip(counts, lengths))
        assert sum(2.0 ** -int(l) for l in lengths if l) <= 1  # decodable


def test_huffman_bytes_counts_payload_and_table():
    codes = np.array([0, 0, 0, 0, 1, 1, 2, 3])  # lengths 1, 2, 3, 3: 4 + 4 + 3 + 3 = 14 bits
    assert list(huffman_lengths(np.bincount(codes, minlength=4))) == [1, 2, 3, 3]
    assert huffman_bytes(codes) == 2 + (1 + 2 * 4)  # 2 payload bytes; count + 4 (symbol, length) pairs
    assert huffman_bytes(np.zeros(80, int)) == 10 + 3  # one symbol: 1 bit each
    uniform = np.arange(256).repeat(4)  # all 256 symbols used: 8 bits each, a 256-byte length table
    assert huffman_bytes(uniform) == 1024 + 256
    with pytest.raises(InputError, match="0..255"):
        huffman_bytes(np.array([256]))


# --- width probing ----------------------------------------------------------------------------


def test_probe_widths_bisects_for_each_floor():
    truth = {"1": 0.10, "2": 0.50, "3": 0.80, "4": 0.885, "5": 0.893, "6": 0.899, "8": 0.90, "float16": 0.90}
    asked = []

    def top1(w):
        asked.append(w)
        return truth[w]

    floors = [floor_for(0.90, t) for t in (0.5, 1, 2)]
    got = dict(probe_widths(top1, Sweep().checked(), floors))
    assert all(got[w] == truth[w] for w in got) and len(asked) == len(set(asked))  # each probed once
    assert "5" in got and "4" in got  # 0.5 point -> 5 bits, 2 points -> 4 bits (narrowest reaching each)
    assert "3" in got  # the width just below, which shows 4 is the narrowest
    assert "float16" in got and len(got) < len(truth)


# --- the models, the sweep and the shared preprocessing -------------------------------------


def test_unknown_model_and_bad_sweep_are_refused():
    with pytest.raises(InputError, match="unknown model.*resnet99"):
        check_models(["resnet20", "resnet99"])
    assert check_models([]) == ["resnet20", "resnet56", "squeezenet", "efficientnet_lite2"]
    with pytest.raises(InputError, match="widths"):
        Sweep(widths=(0,)).checked()
    with pytest.raises(InputError, match="float32"):
        Sweep(widths=("float32",)).checked()
    with pytest.raises(InputError, match="image codec 'gif'"):
        Sweep(image_codecs={"gif": (50,)}).checked()
    with pytest.raises(InputError, match="qualities"):
        Sweep(image_codecs={"jpeg": (101,)}).checked()
    lossy = [c.name for c in CODEC_TABLE if c.lossy]
    if lossy:  # a lossy table entry is an image codec at cut 0, not a lossless stage
        with pytest.raises(InputError, match="lossless"):
            Sweep(codecs=(lossy[0],)).checked()


def test_lossless_codecs_follow_the_table():
    assert lossless_codecs() == tuple(c.name for c in CODEC_TABLE if not c.lossy)
    assert {"none", "lz4", "zstd"} <= set(lossless_codecs())
    assert Sweep().checked().codecs == lossless_codecs()


def test_efficientnet_lite_preset_splits_into_crop_and_normalisation():
    (name,), _ = load_samples(1)
    images, _ = raw_images("imagenet", limit=1)
    crop, x = model_view(images[0], "efficientnet_lite", (260, 260))  # checks normalise(crop) == preset
    assert crop.size == (260, 260) and x.shape == (3, 260, 260) and name


# --- a tiny real run --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("rate") / "ra"
    argv = [
        "rate-accuracy",
        "resnet20",
        "--limit",
        "8",
        "--max-cuts",
        "2",
        "--widths",
        "4,8",
        "--image-codec",
        "jpeg=50,90",
        "--image-codec",
        "png=100",
        "--byte-images",
        "4",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    return out


def test_tiny_run_writes_the_figure_table_and_points(tiny):
    assert (tiny / "resnet20.png").stat().st_size > 10_000
    text = (tiny / "README.md").read_text()
    assert "## resnet20" in text and "8 labelled images" in text and "Against float32 at the same cut" in text
    (model,) = json.loads((tiny / "rate_accuracy.json").read_text())["models"]
    assert model["images"] == 8 and model["byte_images"] == 4
    assert [c["position"] for c in model["cuts"]] == [0, 52]  # spread: the first and the last
    methods = {p["method"] for p in model["points"]}
    assert methods == {"ours", "jpeg", "png", "float32-split", "jalad"}
    ours = [p for p in model["points"] if p["method"] == "ours"]
    lossless = [p for p in ours if "level" not in p["where"]]
    assert {p["where"]["codec"] for p in lossless} == set(lossless_codecs())
    lossy = [p for p in ours if "level" in p["where"]]  # the table's image codecs, at cut 0 only
    assert {p["where"]["codec"] for p in lossy} == {c.name for c in CODEC_TABLE if c.lossy}
    assert all(p["where"]["cut"] == 0 and p["where"]["bits"] == "8" for p in lossy)
    assert {p["where"]["bits"] for p in ours} <= {"4", "8"}
    for cut in model["cuts"]:
        f32 = next(
            p for p in model["points"] if p["method"] == "float32-split" and p["where"]["cut"] == cut["position"]
        )
        assert f32["bytes"] > 4 * cut["values"] and f32["accuracy"] == model["float_accuracy"]
        eight = [
            p
            for p in ours
            if p["where"]["cut"] == cut["position"]
            and p["where"]["bits"] == "8"
            and p["where"]["granularity"] == "tensor"
        ]  # per channel, a pooled vector's header holds a range per value and can outgrow float32
        assert eight and all(p["bytes"] < f32["bytes"] for p in eight)
    (png,) = [p for p in model["points"] if p["method"] == "png"]
    assert png["where"]["differs_from_float"] == 0  # the lossless input is the simulator's own input
    assert png["accuracy"] == model["float_accuracy"]
    jpeg = sorted((p for p in model["points"] if p["method"] == "jpeg"), key=lambda p: p["where"]["quality"])
    assert jpeg[0]["bytes"] < jpeg[1]["bytes"]


def test_command_refuses_bad_input(tmp_path, capsys):
    assert main(["rate-accuracy", "resnet99", "--out", str(tmp_path)]) == 2
    assert "resnet99" in capsys.readouterr().err
    assert main(["rate-accuracy", "resnet20", "--thresholds", "1,-2", "--out", str(tmp_path)]) == 2
    assert "thresholds" in capsys.readouterr().err
    assert main(["rate-accuracy", "resnet20", "--thresholds", "one", "--out", str(tmp_path)]) == 2
    assert main(["rate-accuracy", "resnet20", "--image-codec", "jpeg=high", "--out", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())  # refused before any work


def test_results_read_back_and_merge(tiny, tmp_path):
    from dyno_compile.evaluate.rate_report import merged, read_results, write_results

    (r20,) = read_results(tiny)
    assert r20.model == "resnet20" and r20.points and r20.command.startswith("python -m dyno_compile rate-accuracy")
    other = ModelResult.from_dict({**r20.to_dict(), "model": "squeezenet"})
    again = ModelResult.from_dict({**r20.to_dict(), "float_accuracy": 0.5})
    both = merged([other, r20], [again])
    assert [r.model for r in both] == ["resnet20", "squeezenet"] and both[0].float_accuracy == 0.5
    write_results(both, tmp_path)
    assert [r.model for r in read_results(tmp_path)] == ["resnet20", "squeezenet"]
    (tmp_path / "rate_accuracy.json").write_text("{}")
    with pytest.raises(InputError, match="--fresh"):
        read_results(tmp_path)


def test_render_only_redraws_from_the_json(tiny, tmp_path):
    (tiny / "README.md").unlink()
    (tiny / "resnet20.png").unlink()
    assert main(["rate-accuracy", "--render-only", "--out", str(tiny)]) == 0
    assert "## resnet20" in (tiny / "README.md").read_text() and (tiny / "resnet20.png").is_file()
    assert main(["rate-accuracy", "--render-only", "--out", str(tmp_path)]) == 2  # nothing to render


# --- the must-show comparison and the per-cut rows ---------------------------------------------


def _result(points: list[Point]) -> ModelResult:
    """A hand-made result: two cuts (64 and 4,096 values), float top-1 0.90."""
    cuts = [{"position": 10, "tensors": ["a"], "values": 4096}, {"position": 20, "tensors": ["b"], "values": 64}]
    return ModelResult("resnet20", "hand-made", 1000, 64, 0.90, points, cuts, {}, [], {}, (0.5, 1.0, 2.0))


def test_must_show_and_per_cut_rows_on_hand_made_points():
    from dyno_compile.evaluate.rate_report import _per_cut_table, must_show, per_cut_rows

    pts = [
        _p("float32-split", 16_433, 0.90, cut=10),
        _p("ours", 400, 0.895, cut=10, bits=3, granularity="tensor", layout="stream", codec="zstd"),
        _p("ours", 200, 0.85, cut=10, bits=1, granularity="tensor", layout="stream", codec="zstd"),  # 5 points down
        _p("float32-split", 305, 0.90, cut=20),
        _p("ours", 65, 0.892, cut=20, bits=1, granularity="tensor", layout="stream", codec="none"),
        _p("webp", 740, 0.891, quality=95),
        _p("jpeg", 500, 0.87, quality=50),  # 3 points down: not within 1
        _p("png", 2000, 0.90),  # lossless: never the image contender
    ]
    m = must_show(_result(pts), 1.0)
    assert m.ours.bytes == 65 and m.image.method == "webp" and m.float32.bytes == 305
    assert m.image_ratio == pytest.approx(65 / 740) and m.float_ratio == pytest.approx(305 / 65)
    assert m.best_float_ratio == pytest.approx(16_433 / 400) and m.best_float_cut == 10
    rows = per_cut_rows(_result(pts), 1.0)
    assert [r.cut for r in rows] == [10, 20] and [r.values for r in rows] == [4096, 64]
    assert rows[0].ours.bytes == 400 and rows[0].float_ratio == pytest.approx(16_433 / 400)
    assert rows[0].image_ratio == pytest.approx(400 / 740)
    tight = per_cut_rows(_result(pts), 0.5)  # floor 0.895: cut 10's 0.895 ties (within), cut 20's 0.892 is not
    assert tight[0].ours.bytes == 400 and tight[1].ours is None and tight[1].float_ratio is None
    table = "\n".join(_per_cut_table(_result(pts), 1.0))
    assert "| cut 10 (a) | 4,096 | 16.4 kB | 400 B | 3, tensor, stream, zstd | 41.1x | 0.541x |" in table
