"""The run-time side of DynO: live link and load estimates, and the per-request selector."""

from dyno_compile.runtime.link import Conditions, LinkEstimator, UplinkTrace
from dyno_compile.runtime.selector import (
    POLICIES,
    CloudOnly,
    Decision,
    DeviceOnly,
    Fixed8Bit,
    HighestThroughput,
    Jalad,
    LowestLatency,
    Neurosurgeon,
    Onloading,
    Pinned,
    Policy,
    Prediction,
    Selector,
    make_policy,
    predict,
)

__all__ = [
    "POLICIES",
    "CloudOnly",
    "Conditions",
    "Decision",
    "DeviceOnly",
    "Fixed8Bit",
    "HighestThroughput",
    "Jalad",
    "LinkEstimator",
    "LowestLatency",
    "Neurosurgeon",
    "Onloading",
    "Pinned",
    "Policy",
    "Prediction",
    "Selector",
    "UplinkTrace",
    "make_policy",
    "predict",
]
