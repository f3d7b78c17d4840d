"""Binding an ONNX file's dynamic dimensions before import, and rebatching a batch-1 export."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import rel_err, run_cli
from dyno_compile.cli import main
from dyno_compile.errors import FrontendError
from dyno_compile.frontend.onnx_bind import parse_input_shape
from dyno_compile.frontend.onnx_import import from_onnx
from dyno_compile.ir import Interpreter

RNG = np.random.default_rng(3)


def classifier(batch_dim: int | str, head: str = "flatten", hw: tuple = (8, 8)) -> onnx.ModelProto:
    """Conv -> ReLU -> global pool -> (Flatten | Reshape to a constant | ...) -> Gemm: the tail
    of every torchvision classifier, as the TorchScript and dynamo exporters write it."""
    inits = {
        "w": RNG.normal(0, 0.3, (6, 3, 3, 3)).astype(np.float32),
        "fc": RNG.normal(0, 0.3, (5, 6)).astype(np.float32),
        "fcb": RNG.normal(0, 0.3, (5,)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
    ]
    if head == "flatten":
        nodes.append(helper.make_node("Flatten", ["p"], ["f"]))
    elif head == "reshape":  # the dynamo exporter: an initializer [1, 6]
        inits["shape"] = np.array([1, 6], np.int64)
        nodes.append(helper.make_node("Reshape", ["p", "shape"], ["f"]))
    elif head == "constant":  # a Constant node [1, -1]
        nodes.append(helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([1, -1]))))
        nodes.append(helper.make_node("Reshape", ["p", "shape"], ["f"]))
    elif head == "unbatchable":  # folds the batch into the channels: cannot be rebatched
        inits["shape"] = np.array([6, 1], np.int64)
        nodes.append(helper.make_node("Reshape", ["p", "shape"], ["t"]))
        nodes.append(helper.make_node("Transpose", ["t"], ["f"], perm=[1, 0]))
    nodes.append(helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1))
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 3, *hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_a_dynamic_batch_is_one_by_default_and_batch_binds_it() -> None:
    model = classifier("batch_size")
    assert from_onnx(model).inputs[0].shape == (1, 3, 8, 8)
    graph = from_onnx(model, batch=4)
    x = RNG.normal(size=(4, 3, 8, 8)).astype(np.float32)
    assert graph.inputs[0].shape == (4, 3, 8, 8)
    assert rel_err(Interpreter(graph)(x), ort_run(model, x)) < 1e-5


def test_input_shapes_may_change_a_fixed_image_size() -> None:
    """A fully convolutional export at another size (SqueezeNet at ncnn's 227 px)."""
    model = classifier(1)
    graph = from_onnx(model, input_shapes={"x": (1, 3, 13, 11)})
    x = RNG.normal(size=(1, 3, 13, 11)).astype(np.float32)
    same_weights_at_13x11 = classifier(1, hw=(13, 11))
    for init, fixed in zip(same_weights_at_13x11.graph.initializer, model.graph.initializer):
        init.CopyFrom(fixed)
    assert rel_err(Interpreter(graph)(x), ort_run(same_weights_at_13x11, x)) < 1e-5


def test_input_shapes_bind_the_other_dynamic_dimensions() -> None:
    model = classifier("N", hw=("H", "W"))
    with pytest.raises(FrontendError, match=r"dimension 2, 3\); bind them with --input-shape x=1x3x\?x\?"):
        from_onnx(model)
    graph = from_onnx(model, input_shapes={"x": (2, 3, 5, 7)})
    x = RNG.normal(size=(2, 3, 5, 7)).astype(np.float32)
    assert rel_err(Interpreter(graph)(x), ort_run(model, x)) < 1e-5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_shapes": {"nope": (1, 3, 8, 8)}}, "no input named 'nope'; the model's inputs are 'x'"),
        ({"input_shapes": {"x": (1, 3, 8)}}, r"rank 3, but the model declares \[N, 3, 8, 8\]"),
        ({"input_shapes": {"x": (1, 4, 8, 8)}}, r"node 'c' \(Conv\) cannot be translated"),
        ({"input_shapes": {"x": (2, 3, 8, 8)}, "batch": 3}, "disagree"),
        ({"batch": 0}, "batch must be at least 1"),
    ],
)
def test_bad_bindings_are_refused_naming_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(FrontendError, match=message):
        from_onnx(classifier("N"), **kwargs)


@pytest.mark.parametrize("head", ["reshape", "constant"])
def test_a_batch_1_export_is_rebatched_through_its_constant_reshape(head: str) -> None:
    """The dynamo exporter's ``[1, 512]`` before the classifier: its leading 1 is the batch."""
    model = classifier(1, head)
    graph = from_onnx(model, batch=4)
    x = RNG.normal(size=(4, 3, 8, 8)).astype(np.float32)
    per_sample = np.concatenate([ort_run(model, x[i : i + 1]) for i in range(4)])
    assert graph.node(graph.outputs[0]).shape == (4, 5)
    assert rel_err(Interpreter(graph)(x), per_sample) < 1e-5
    assert from_onnx(model).inputs[0].shape == (1, 3, 8, 8)  # a fixed batch stays without --batch


def test_a_reshape_that_cannot_be_rebatched_is_named() -> None:
    with pytest.raises(FrontendError, match=r"at batch 4, Reshape 't' cannot reshape \(4, 6, 1, 1\) to its fixed"):
        from_onnx(classifier(1, "unbatchable"), batch=4)
    assert from_onnx(classifier(1, "unbatchable")).inputs[0].shape == (1, 3, 8, 8)


@pytest.mark.parametrize(("text", "want"), [("x=1x3x224x224", ("x", (1, 3, 224, 224))), ("a=b=2X3", ("a=b", (2, 3)))])
def test_parse_input_shape(text: str, want: tuple) -> None:
    assert parse_input_shape(text) == want


@pytest.mark.parametrize("text", ["x", "=1x3", "x=", "x=1x0", "x=1xax3", "x=-1x3"])
def test_parse_input_shape_refuses_malformed_text(text: str) -> None:
    with pytest.raises(FrontendError, match="expected NAME=DxDx"):
        parse_input_shape(text)


# ---------------------------------------------------------------------- from the command line
def cli(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli(*args, timeout=timeout, env={**os.environ, "COLUMNS": "80"})  # errors must not wrap at 80


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    files = {
        "dynamic": classifier("batch_size"),
        "dynamic_hw": classifier("N", hw=("H", "W")),
        "batch1": classifier(1, "reshape"),
    }
    for name, model in files.items():
        onnx.save(model, folder / f"{name}.onnx")
    return {name: folder / f"{name}.onnx" for name in files}


@pytest.mark.parametrize(
    ("file", "args", "shape"),
    [
        ("dynamic", ["--batch", "4"], [4, 3, 8, 8]),
        ("dynamic", [], [1, 3, 8, 8]),
        ("batch1", ["--batch", "4"], [4, 3, 8, 8]),
        ("dynamic_hw", ["--input-shape", "x=1x3x16x12"], [1, 3, 16, 12]),
    ],
)
def test_inspect_binds_dimensions_from_the_command_line(onnx_files, capsys, file, args, shape) -> None:
    assert main(["inspect", str(onnx_files[file]), "--json", *args]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inputs"][0]["shape"] == shape
    assert report["layers"][-1]["shape"][0] == shape[0]


@pytest.mark.parametrize(
    ("file", "args", "message"),
    [
        ("dynamic_hw", ["--input-shape", "x=1x3x16x12", "--batch", "2"], "disagree"),
        ("dynamic_hw", ["--input-shape", "x=1x3x16"], "has rank 3"),
        ("dynamic_hw", ["--input-shape", "y=1x3x16x12"], "no input named 'y'"),
        ("dynamic", ["--batch", "0"], "--batch must be at least 1"),
    ],
)
def test_inspect_refuses_a_bad_binding(onnx_files, capsys, file, args, message) -> None:
    assert main(["inspect", str(onnx_files[file]), *args]) == 2
    assert message in capsys.readouterr().err


def test_an_unbound_dimension_is_one_line_naming_the_option(onnx_files) -> None:
    """Run as a script would, with stderr a pipe 80 columns wide: one line, naming the option."""
    out = cli("inspect", onnx_files["dynamic_hw"])
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert "--input-shape x=1x3x?x?" in out.stderr and "input_shapes" in out.stderr


def test_input_shape_is_refused_for_a_model_with_a_fixed_definition(capsys) -> None:
    assert main(["inspect", "resnet20", "--input-shape", "x=1x3x32x32"]) == 2
    assert "binds the dynamic dimensions of an ONNX file" in capsys.readouterr().err


@pytest.mark.slow
def test_a_dynamic_batch_file_builds_with_batched_cloud_segments_and_searches(tmp_path) -> None:
    """The issue's path: a dynamic-batch export through ``build`` (which also imports the
    cloud's batch-4 segments) and ``search``; and a batch-1 export, rebatched, likewise.
    32x32 inputs, so that the real CIFAR-10 images are the default calibration data."""
    for file, model in {"dynamic": classifier("N", hw=(32, 32)), "batch1": classifier(1, "reshape", (32, 32))}.items():
        onnx.save(model, tmp_path / f"{file}.onnx")
        art = tmp_path / file
        out = cli("build", tmp_path / f"{file}.onnx", "--batch", "1", "--device", "host", "--cloud", "host",
                  "--out", art, "--no-search", timeout=900)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "no batched cloud segments" not in out.stderr
        assert json.loads((art / "manifest.json").read_text())["cloud_batch"] == 4
        out = cli("search", art, "--calibration-limit", "64", "--evaluations", "6", "--no-labels",
                  timeout=900)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "Pareto set" in out.stdout
    out = cli("build", tmp_path / "dynamic.onnx", "--batch", "2", "--device", "host", "--cloud", "host", "--out",
              tmp_path / "b2")  # fmt: skip
    assert out.returncode == 2 and "needs a model of batch 1" in out.stderr  # refused before compiling
    assert not (tmp_path / "b2").exists()
