"""Input-specific asymmetric uniform quantisation (DynO's CNN-ISPM): the NumPy reference.

The range is taken from *this* input, per tensor or per channel, so a post-ReLU map whose
values sit in ``[0, 3.2]`` today and ``[0, 0.4]`` tomorrow uses all ``2**bits`` levels both
times. The JAX cut ops (``dyno_compile/ir/ops/quant.py``: ``quant_range``, ``quantize``,
``dequantize``) and the TVM kernels must match this file bit for bit, so every step is
written out in float32 in a fixed order, with multiplications by reciprocals where one
might expect divisions:

    lo    = min(x)                             # over the reduced axes, float32
    hi    = max(x)
    scale = (hi - lo) * float32(1 / (2**bits - 1))   # reciprocal rounded once, from double
    scale = scale if scale >= 2**-126 else 1.0       # not a normal float32: constant input
    q     = clip(rint((x - lo) * (float32(1) / scale)), 0, 2**bits - 1)   # rint: half to even
    x'    = float32(q) * scale + lo            # two roundings: a multiply, then an add (no FMA)

Why reciprocals: under ``jax.jit`` XLA rewrites ``a / broadcast(s)`` (and a division by
a constant) into ``a * (1 / s)``, which is not the correctly rounded quotient; measured
on jax 0.10.2 CPU, 2 of 262,144 8-bit codes and the 8-bit scale itself differed from a
true division. Written as multiplications, NumPy and XLA agree (tested); TVM must follow.

Why ``scale >= 2**-126`` (the smallest normal float32) rather than ``hi == lo``: it is the
same for a constant or all-zero tensor or channel (``scale = 0``: every code 0, ``x' = lo``
exactly), but also covers ranges so tiny that ``scale`` is subnormal or underflows to 0,
where ``1 / scale`` would be inf and ``0 * inf`` NaN (and a flush-to-zero device would
see 0). There all codes are 0 and the error is at most ``hi - lo`` (< 1e-33). The JAX op
and the TVM kernels apply the same rule, so all three agree in that corner too.

Dequantisation is two roundings here (and in JAX run eagerly); under ``jax.jit`` XLA's CPU
backend contracts it into one FMA, which agrees whenever ``lo = 0`` (post-ReLU maps) and
may differ by the rounding of ``q * scale`` otherwise.

Passthrough modes ``"float16"`` (a cast, round to nearest even; finite values beyond
±65504 become ±inf, as any cast does) and ``"float32"`` carry values unchanged, NaN and
±Inf included. Integer modes refuse NaN and ±Inf: one of them makes the range, and with it
every other value, meaningless.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dyno_compile.packing import PackError
from dyno_compile.packing.vocab import FLOAT_MODES, MIN_SCALE, Mode, check_granularity, check_mode

#: Input dtypes accepted; float16 widens to float32 exactly before anything else.
INPUT_DTYPES: tuple[np.dtype, ...] = (np.dtype(np.float32), np.dtype(np.float16))


def levels(bits: int) -> int:
    """The largest code of a ``bits``-bit quantiser: ``2**bits - 1``."""
    return (1 << bits) - 1


@dataclass(frozen=True, eq=False)
class QuantParams:
    """How one tensor was quantised: enough to dequantise its codes, and no more.

    ``lo`` and ``scale`` are 1-D float32 arrays: length 1 per tensor, ``shape[axis]`` per
    channel, length 0 for passthrough modes. ``axis`` is non-negative, and 0 when
    ``granularity`` is ``"tensor"``.
    """

    bits: Mode
    granularity: str
    axis: int
    lo: np.ndarray
    scale: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "lo", np.ascontiguousarray(self.lo, dtype=np.float32).reshape(-1))
        object.__setattr__(self, "scale", np.ascontiguousarray(self.scale, dtype=np.float32).reshape(-1))

    @property
    def is_passthrough(self) -> bool:
        return isinstance(self.bits, str)

    def __eq__(self, other: object) -> bool:
        """Bitwise equality of lo and scale: the kernels must match exactly, not approximately."""
        if not isinstance(other, QuantParams):
            return NotImplemented
        return (
            self.bits == other.bits
            and self.granularity == other.granularity
            and self.axis == other.axis
            and _same_bits(self.lo, other.lo)
            and _same_bits(self.scale, other.scale)
        )

    __hash__ = None  # type: ignore[assignment]


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))


def as_input(x: np.ndarray, field: str = "dtype") -> np.ndarray:
    """``x`` as float32, refusing dtypes other than float32/float16.

    A float64 or integer tensor is refused rather than cast: a silent rounding step here
    would be one the device kernel does not make, and the outputs would stop matching.
    """
    x = np.asarray(x)
    if x.dtype not in INPUT_DTYPES:
        raise PackError(
            f"dtype {x.dtype} is not float32 or float16; cast the cut tensor with .astype(np.float32) before packing",
            field=field,
        )
    return x.astype(np.float32, copy=False)


def normalize_axis(axis: object, ndim: int, field: str = "axis") -> int:
    """``axis`` in ``[-ndim, ndim)`` as a non-negative int; per-channel needs rank >= 1."""
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise PackError(f"must be an int, got {axis!r}", field=field)
    if not -ndim <= axis < ndim:
        raise PackError(
            f"channel axis {axis} is out of range for a rank-{ndim} tensor "
            f"(allowed {-ndim}..{ndim - 1}); use granularity='tensor' or another axis",
            field=field,
        )
    return int(axis) % ndim


def _check_finite(x: np.ndarray, field: str) -> None:
    finite = np.isfinite(x)
    if finite.all():
        return
    nan = int(np.count_nonzero(np.isnan(x)))
    bad = int(x.size - np.count_nonzero(finite))
    raise PackError(
        f"{bad} non-finite values ({nan} NaN, {bad - nan} ±Inf) in a tensor of {x.size}; "
        f"integer quantisation needs a finite range: clean the tensor or use a passthrough "
        f"mode {FLOAT_MODES}, which carries NaN and Inf unchanged",
        field=field,
    )


def _channel_shape(ndim: int, axis: int, count: int) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector along ``axis`` of a rank-``ndim`` tensor."""
    shape = [1] * ndim
    shape[axis] = count
    return tuple(shape)


def _range(x: np.ndarray, granularity: str, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) as 1-D float32 arrays; an empty reduction gives 0 (scale then becomes 1)."""
    if granularity == "tensor":
        if x.size == 0:
            return np.zeros(1, np.float32), np.zeros(1, np.float32)
        return np.min(x, keepdims=True).reshape(1), np.max(x, keepdims=True).reshape(1)
    count = x.shape[axis]
    if x.size == 0:
        return np.zeros(count, np.float32), np.zeros(count, np.float32)
    reduce = tuple(d for d in range(x.ndim) if d != axis)
    return np.min(x, axis=reduce).reshape(count), np.max(x, axis=reduce).reshape(count)


def inverse_levels(bits: int) -> np.float32:
    """``float32(1 / (2**bits - 1))``: the quotient in double, rounded once to float32,
    exactly as ``jnp.float32(1 / (2**bits - 1))`` in the JAX op."""
    return np.float32(1 / levels(bits))


def compute_scale(lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    """``(hi - lo) * float32(1 / (2**bits - 1))`` in float32; 1.0 where that is below ``MIN_SCALE``."""
    with np.errstate(over="ignore", under="ignore"):  # both handled just below
        scale = (hi - lo) * inverse_levels(bits)
    if not np.isfinite(scale).all():
        raise PackError(
            f"value range [{float(lo.min())}, {float(hi.max())}] overflows float32 "
            f"(hi - lo > 3.4e38); scale the tensor down or use a passthrough mode",
            field="values",
        )
    return np.where(scale >= MIN_SCALE, scale, np.float32(1.0)).astype(np.float32)


def quantize(
    x: np.ndarray, bits: Mode, *, granularity: str = "tensor", axis: int = 1
) -> tuple[np.ndarray, QuantParams]:
    """Quantise ``x`` with its own range: ``(codes, params)``.

    Codes are uint16 of ``x``'s shape for integer modes (values ``0..2**bits - 1``), or
    ``x`` cast to float16/float32 for passthrough modes (granularity and axis are then
    ignored and recorded as ``"tensor"``, 0). ``axis`` is the channel axis for
    ``granularity="channel"`` (1 for NCHW). Empty tensors are handled: no codes, ``lo = 0``,
    ``scale = 1``.
    """
    bits = check_mode(bits)
    granularity = check_granularity(granularity)
    x = as_input(x)
    if isinstance(bits, str):
        empty = np.zeros(0, np.float32)
        with np.errstate(over="ignore"):  # float16 overflow to ±inf is the documented cast
            return x.astype(bits), QuantParams(bits, "tensor", 0, empty, empty)
    axis = normalize_axis(axis, x.ndim) if granularity == "channel" else 0
    _check_finite(x, "values")
    lo, hi = _range(x, granularity, axis)
    scale = compute_scale(lo, hi, bits)
    params = QuantParams(bits, granularity, axis, lo, scale)
    shape = _channel_shape(x.ndim, axis, lo.size) if granularity == "channel" else ()
    q = np.rint((x - lo.reshape(shape)) * (np.float32(1) / scale).reshape(shape))
    return np.clip(q, 0, levels(bits)).astype(np.uint16), params


def dequantize(codes: np.ndarray, params: QuantParams) -> np.ndarray:
    """Float32 values from codes: ``float32(q) * scale + lo``, two roundings, in that order.

    For passthrough modes this is a widening cast. Codes are trusted to be in range (the
    frame decoder guarantees it: b-bit unpacking cannot produce more than ``2**b - 1``).
    """
    codes = np.asarray(codes)
    if params.is_passthrough:
        return codes.astype(np.float32)
    if params.granularity == "channel":
        if codes.ndim <= params.axis or codes.shape[params.axis] != params.lo.size:
            raise PackError(
                f"codes of shape {codes.shape} do not have {params.lo.size} channels on axis {params.axis}",
                field="codes",
            )
        shape = _channel_shape(codes.ndim, params.axis, params.lo.size)
    else:
        shape = ()
    return codes.astype(np.float32) * params.scale.reshape(shape) + params.lo.reshape(shape)
