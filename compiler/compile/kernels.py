"""Which channel counts this machine's int8 convolution kernels run efficiently, measured.

ONNX Runtime's int8 convolutions compute output channels in blocks (AVX-512 VNNI holds 16 int32
accumulators per register), so a layer's time is a staircase in its width: on such a CPU 40
output channels take as long as 48. Pruning to 40 then gives away accuracy for no speed, and
keeping multiples of 8 (prune.ROUND_TO) is too fine. ``choose_round_to`` measures the staircase
with real sessions of a small int8 QDQ 3×3 convolution (one thread, the way the compile measures
latency) and picks the multiple that pruning should keep.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ..errors import InputError

log = logging.getLogger(__name__)

RoundTo = int | Literal["auto"]
CANDIDATES = (8, 16, 32)
WIDTHS = tuple(range(4, 69, 4))  # output channels measured: 4..68, every 4 (68: past 64's step)
IN_CHANNELS = 32  # the digits CNN's second conv: 32 × 26×26 in, 3×3, 24×24 out
SIZE = 26
KERNEL = 3
TOLERANCE = 0.10  # a time difference smaller than this is noise, not a kernel step
RUNS, REPEATS, WARMUP = 150, 3, 10


@dataclass(frozen=True)
class KernelProfile:
    """The int8 3×3 conv's MAC rate per output width on this machine, and the multiple chosen."""

    rates: dict[int, float]  # output channels → GMAC/s (1 thread, batch 1)
    multiple: int
    in_channels: int = IN_CHANNELS
    size: int = SIZE

    def as_dict(self) -> dict[str, Any]:
        return {
            "multiple": self.multiple,
            "conv": f"int8 QDQ {KERNEL}x{KERNEL} conv, {self.in_channels} channels in, "
            f"{self.size}x{self.size}",
            "rates": [{"width": w, "gmacs": round(r, 1)} for w, r in sorted(self.rates.items())],
        }


def _conv_macs(width: int, in_channels: int = IN_CHANNELS, size: int = SIZE) -> int:
    out = size - KERNEL + 1
    return width * out * out * in_channels * KERNEL * KERNEL


def qdq_conv(width: int, in_channels: int = IN_CHANNELS, size: int = SIZE) -> onnx.ModelProto:
    """A Conv+ReLU as ``quantize`` writes it for x86: u8 activations, s8 per-channel weights,
    int32 bias, all in QDQ pairs, so ORT fuses it into the QLinearConv a compiled model runs."""
    rng = np.random.default_rng(width)
    weights = rng.integers(-127, 128, (width, in_channels, KERNEL, KERNEL), dtype=np.int8)
    constants: dict[str, np.ndarray] = {
        "xs": np.array(0.02, np.float32), "xz": np.array(128, np.uint8),
        "wq": weights, "ws": np.full(width, 0.01, np.float32), "wz": np.zeros(width, np.int8),
        "bq": rng.integers(-1000, 1000, width, dtype=np.int32),
        "bs": np.full(width, 2e-4, np.float32), "bz": np.zeros(width, np.int32),
        "ys": np.array(0.05, np.float32), "yz": np.array(0, np.uint8),
    }  # fmt: skip
    node = helper.make_node
    nodes = [
        node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
        node("DequantizeLinear", ["bq", "bs", "bz"], ["bd"], axis=0),
        node("Conv", ["xd", "wd", "bd"], ["c"], name="conv", kernel_shape=[KERNEL, KERNEL]),
        node("Relu", ["c"], ["r"]),
        node("QuantizeLinear", ["r", "ys", "yz"], ["yq"]),
        node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    out = size - KERNEL + 1
    graph = helper.make_graph(
        nodes,
        f"conv{width}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, in_channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width, out, out])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _seconds_per_run(model: onnx.ModelProto, x: np.ndarray) -> float:
    """The lowest of a few medians: other work on the machine only ever adds time."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feed = {"x": x}
    for _ in range(WARMUP):
        session.run(None, feed)
    medians = []
    for _ in range(REPEATS):
        samples = np.empty(RUNS)
        for i in range(RUNS):
            start = time.perf_counter()
            session.run(None, feed)
            samples[i] = time.perf_counter() - start
        medians.append(float(np.median(samples)))
    return min(medians)


def measure_rates(widths: Sequence[int] = WIDTHS) -> dict[int, float]:
    """GMAC/s of the int8 conv at each output width, one thread (about half a second)."""
    x = np.random.default_rng(0).standard_normal((1, IN_CHANNELS, SIZE, SIZE)).astype(np.float32)
    return {w: _conv_macs(w) / _seconds_per_run(qdq_conv(w), x) / 1e9 for w in widths}


def _up(width: int, multiple: int) -> int:
    return -(-width // multiple) * multiple


def choose_multiple(
    rates: Mapping[int, float],
    candidates: Sequence[int] = CANDIDATES,
    tolerance: float = TOLERANCE,
) -> int:
    """The channel multiple pruning should keep, from the MAC rate per width.

    A width's time is ``width / rate`` (its MACs grow with the width). The choice is the smallest
    candidate ``m`` for which both hold, within ``tolerance``:

    - widths in between multiples of ``m`` don't gain: none runs faster than the next multiple of
      ``m`` up (rounding up to ``m`` costs no time, so the channels are free);
    - multiples of ``m`` reach the peak rate for their time: one step wider (the next width
      measured) takes longer, so each multiple is the widest layer its time buys.

    On a VNNI CPU multiples of 8 fail the second rule (40 takes as long as 48) and multiples of
    32 fail the first (48 is faster than 64): 16 is chosen. When no candidate passes both: the
    largest whose in-between widths don't gain (the steps are coarser than every candidate), else
    the smallest (the kernels have no steps this coarse: any multiple runs as fast as its width).
    """
    times = {w: w / r for w, r in rates.items() if r > 0}
    widths = sorted(times)

    def no_gain(m: int) -> bool:
        ups = [(w, _up(w, m)) for w in widths if _up(w, m) in times]
        return all(times[up] <= (1 + tolerance) * times[w] for w, up in ups)

    def corners(m: int) -> bool:
        steps = [(w, nxt) for w, nxt in itertools.pairwise(widths) if w % m == 0]
        return bool(steps) and all(times[nxt] > (1 + tolerance) * times[w] for w, nxt in steps)

    free = [m for m in sorted(candidates) if no_gain(m)]
    both = [m for m in free if corners(m)]
    if both:
        return both[0]
    return free[-1] if free else min(candidates)


@functools.cache
def choose_round_to() -> KernelProfile:
    """This machine's profile, measured once per process."""
    rates = measure_rates()
    profile = KernelProfile(rates, choose_multiple(rates))
    log.info("int8 kernels: channel multiple %d (%s)", profile.multiple, _summary(rates))
    return profile


def _summary(rates: Mapping[int, float]) -> str:
    return ", ".join(f"{w}: {r:.0f}" for w, r in sorted(rates.items())) + " GMAC/s"


def resolve_round_to(round_to: RoundTo) -> int:
    """``auto`` measured here; a number as given (checked: pruning keeps at least one channel)."""
    if round_to == "auto":
        return choose_round_to().multiple
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise InputError(f"round_to must be 'auto' or a whole number ≥ 1, got {round_to!r}")
    return round_to
