"""Model zoo: every model runs and traces to frontend-supported primitives, weights load
and validate, and the real CIFAR-10 ResNets reach their published accuracy on test_932."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from jax.extend.core import Jaxpr, jaxprs_in_params

from dyno_compile.errors import InputError
from dyno_compile.zoo import RANDOM, ZooModel, get_model, list_models, param_specs
from dyno_compile.zoo.cifar_resnet import weights_path

IMAGENET = ["resnet18", "resnet50", "mobilenet_v2", "vgg16", "efficientnet_lite2"]
CIFAR = ["resnet20", "resnet56"]

# What the JAX frontend translates; relu/relu6 arrive wrapped in custom_jvp_call and jit.
FRONTEND_PRIMITIVES = {
    "conv_general_dilated",
    "add",
    "sub",
    "mul",
    "div",
    "rsqrt",
    "max",
    "min",
    "custom_jvp_call",
    "jit",
    "reduce_sum",
    "reduce_window_max",
    "dot_general",
    "transpose",
    "reshape",
    "broadcast_in_dim",
    "slice",
    "pad",
    "concatenate",
    "squeeze",
    "convert_element_type",
}

# Trainable parameter counts (running statistics excluded) as published by torchvision,
# akamaster/pytorch_resnet_cifar10 and (EfficientNet-Lite2, 6.09 M) the TF model card: an
# architecture slip changes these.
TRAINABLE = {
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "mobilenet_v2": 3_504_872,
    "vgg16": 138_357_544,
    "resnet20": 269_722,
    "resnet56": 853_018,
    "efficientnet_lite2": 6_092_072,
}
# state_dict entries without num_batches_tracked.
KEYS = {
    "resnet18": 102,
    "resnet50": 267,
    "mobilenet_v2": 262,
    "vgg16": 32,
    "resnet20": 97,
    "resnet56": 277,
    "efficientnet_lite2": 322,
}

# Measured with a plain NumPy forward pass (../shared/data/README.md): correct / 932.
CIFAR_CORRECT = {"resnet20": 854, "resnet56": 863}


@functools.cache
def _model(name: str) -> ZooModel:
    """One build per model per session: VGG16's random weights alone take seconds."""
    return get_model(name, random_bn=True)


@functools.cache
def _cifar_test() -> tuple[np.ndarray, np.ndarray]:
    from dyno_compile.datasets.cifar10 import load_test

    return load_test()


def _primitives(jaxpr: Jaxpr) -> set[str]:
    """Every primitive in ``jaxpr`` and the jaxprs nested in its equations (jit, custom_jvp)."""
    found = set()
    for eqn in jaxpr.eqns:
        found.add(eqn.primitive.name)
        for sub in jaxprs_in_params(eqn.params):
            found |= _primitives(sub)
    return found


def test_list_models() -> None:
    assert list_models() == [
        "resnet18",
        "resnet50",
        "mobilenet_v2",
        "mobilenet_v3_small",
        "densenet121",
        "vgg16",
        "resnet20",
        "resnet56",
        "efficientnet_lite2",
        "efficientnet_b0",
        "efficientnet_lite0",
    ]


@pytest.mark.parametrize(
    "name, keys, trainable", [("efficientnet_b0", 311, 5_288_548), ("efficientnet_lite0", 247, 4_652_008)]
)
def test_cost_only_efficientnets_match_the_published_parameter_counts(name: str, keys: int, trainable: int) -> None:
    """B0 and Lite0 (random weights, for costing published latencies) have efficientnet_pytorch's
    and TF's parameter counts: 5,288,548 and 4,652,008 (B0's squeeze-excite is the difference)."""
    specs = param_specs(name)
    assert len(specs) == keys
    assert sum(int(np.prod(s.shape)) for k, s in specs.items() if not k.endswith(("running_mean", "running_var"))) == (
        trainable
    )
    m = get_model(name)
    assert m.input_shape == (1, 3, 224, 224) and not m.real_weights
    used = _primitives(jax.make_jaxpr(m.fn)(m.params, m.random_input()).jaxpr)
    assert used <= FRONTEND_PRIMITIVES | {"logistic"}, sorted(used - FRONTEND_PRIMITIVES)


@pytest.mark.parametrize("name", IMAGENET)
def test_runs_under_jit(name: str) -> None:
    """ImageNet models at batch 1; the CIFAR ones run in the accuracy test (compiling is the cost)."""
    m = _model(name)
    logits = np.asarray(jax.jit(m.fn)(m.params, m.random_input()))
    assert logits.shape == (1, m.num_classes)
    assert np.isfinite(logits).all()
    assert np.std(logits) > 0, "constant logits: the network lost its input somewhere"


@pytest.mark.parametrize("name", IMAGENET + CIFAR)
def test_traces_to_frontend_primitives(name: str) -> None:
    m = _model(name)
    used = _primitives(jax.make_jaxpr(m.fn)(m.params, m.random_input()).jaxpr)
    assert used <= FRONTEND_PRIMITIVES, f"{name} uses {sorted(used - FRONTEND_PRIMITIVES)}"
    assert "conv_general_dilated" in used and "dot_general" in used


@pytest.mark.parametrize("name", IMAGENET + CIFAR)
def test_parameter_names_and_counts_match_pytorch(name: str) -> None:
    specs = param_specs(name)
    assert len(specs) == KEYS[name]
    trainable = sum(int(np.prod(s.shape)) for k, s in specs.items() if not k.endswith(("running_mean", "running_var")))
    assert trainable == TRAINABLE[name]


def test_torchvision_names_spot_checks() -> None:
    r18, r50 = param_specs("resnet18"), param_specs("resnet50")
    assert r18["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert "layer1.0.downsample.0.weight" not in r18
    assert r50["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert r50["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # v1.5: the 3x3 conv strides
    mb = param_specs("mobilenet_v2")
    assert mb["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)  # t=1: no expand conv
    assert mb["features.2.conv.3.running_var"].shape == (24,)
    assert mb["features.18.0.weight"].shape == (1280, 320, 1, 1)
    assert mb["classifier.1.weight"].shape == (1000, 1280)
    vgg = param_specs("vgg16")
    assert vgg["features.28.weight"].shape == (512, 512, 3, 3)
    assert vgg["classifier.0.weight"].shape == (4096, 25088)


def test_cifar_specs_match_the_weight_files() -> None:
    for name in CIFAR:
        with np.load(weights_path(int(name[-2:]))) as npz:
            on_disk = {k: npz[k].shape for k in npz.files if not k.endswith("num_batches_tracked")}
        assert on_disk == {k: s.shape for k, s in param_specs(name).items()}


def test_params_are_deterministic_per_seed() -> None:
    a, b, c = (get_model("resnet18", seed=s, random_bn=True).params for s in (7, 7, 8))
    assert list(a) == list(b)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])
    assert all(v.dtype == np.float32 for v in a.values())


def test_bn_statistics_fresh_by_default_and_random_on_request() -> None:
    fresh = get_model("resnet20", weights=RANDOM).params
    assert np.all(fresh["bn1.weight"] == 1) and np.all(fresh["bn1.running_mean"] == 0)
    assert np.all(fresh["bn1.running_var"] == 1) and np.all(fresh["bn1.bias"] == 0)
    rand = get_model("resnet20", weights=RANDOM, random_bn=True).params
    assert len(np.unique(rand["bn1.running_var"])) == 16 and np.all(rand["bn1.running_var"] > 0)
    assert len(np.unique(rand["bn1.running_mean"])) == 16


def test_he_init_scale_is_fan_out() -> None:
    w = get_model("resnet50", seed=1).params["layer3.0.conv2.weight"]  # 256 x 256 x 3 x 3
    assert np.std(w) == pytest.approx(np.sqrt(2 / (256 * 9)), rel=0.02)


def test_batch_sets_input_shape() -> None:
    m = get_model("resnet20", batch=4)
    assert m.input_shape == (4, 3, 32, 32)
    assert jax.jit(m.fn)(m.params, m.random_input()).shape == (4, 10)


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_resnet_reaches_published_accuracy(name: str) -> None:
    m = get_model(name)
    assert m.real_weights
    x, y = _cifar_test()
    logits = np.asarray(jax.jit(m.fn)(m.params, x))
    assert logits.shape == (len(y), 10) and np.isfinite(logits).all()
    correct = int((logits.argmax(axis=1) == y).sum())
    assert abs(correct / len(y) - CIFAR_CORRECT[name] / 932) <= 0.002, f"{name}: {correct}/{len(y)}"


def test_weights_override_round_trips(tmp_path) -> None:
    m = get_model("resnet20", weights=RANDOM, seed=3, random_bn=True)
    assert not m.real_weights
    path = tmp_path / "w.npz"
    np.savez(path, **m.params, **{"bn1.num_batches_tracked": np.array(5)})  # PyTorch bookkeeping: ignored
    loaded = get_model("resnet20", weights=path)
    assert loaded.real_weights and loaded.weights_source == str(path)
    assert all(np.array_equal(loaded.params[k], m.params[k]) for k in m.params)


def _bad_weights(tmp_path, edit) -> str:
    with np.load(weights_path(20)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    edit(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda a: a.pop("layer2.1.bn1.running_var"), "missing key 'layer2.1.bn1.running_var'"),
        (
            lambda a: a.update({"layer3.0.conv1.weight": np.zeros((64, 32, 1, 1), np.float32)}),
            "'layer3.0.conv1.weight' has shape (64, 32, 1, 1), expected (64, 32, 3, 3)",
        ),
        (lambda a: a.update({"fc.weight": np.zeros((10, 64), np.float32)}), "unexpected key 'fc.weight'"),
        (lambda a: a.update({"linear.bias": np.zeros(10, np.int32)}), "'linear.bias' has dtype int32"),
    ],
)
def test_bad_weights_file_names_the_key(tmp_path, edit, named: str) -> None:
    with pytest.raises(InputError, match="resnet20") as err:
        get_model("resnet20", weights=_bad_weights(tmp_path, edit))
    assert named in str(err.value)


def test_unreadable_or_missing_weights_file(tmp_path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read"):
        get_model("resnet18", weights=junk)
    with pytest.raises(InputError, match="does not exist"):
        get_model("resnet18", weights=tmp_path / "absent.npz")


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(InputError, match="unknown model 'resnet19'.*resnet18.*mobilenet_v2.*resnet56"):
        get_model("resnet19")


@pytest.mark.parametrize("batch", [0, -1, 1.5, True])
def test_bad_batch(batch) -> None:
    with pytest.raises(InputError, match="batch must be a positive integer"):
        get_model("resnet20", batch=batch)
