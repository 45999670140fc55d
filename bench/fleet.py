"""Fleet benchmark: safe rollouts driven by `edgewise serve` on N real agents on one broker.

N ``edgewise-agent run`` processes (default 40), each with its own id, state dir and a 2 fps
looping video, all in group ``fleet`` and serving v1 at start, on a private Mosquitto with
``sys_interval 1``; `edgewise serve --db --key --command-key` drives rollouts made with
`edgewise rollout create`. Half the devices (odd ids) set a latency budget ``[deploy]
max_latency_ms``.

- (a) good: v2 (the same model, another version) in waves 1,10%,50%,100%: seconds until every
  device serves v2, the broker's bytes sent meanwhile against N × the model's size, the
  controller's CPU seconds.
- (b) bad, first wave one device, three models that pass their golden check: ``budget`` too
  slow (~270 ms alone) for the budget (the rollout id is chosen so that the first device has one):
  refused at the probe; ``wrong`` random answers on live frames, with agreement criteria:
  staged as a shadow, judged on agreement; ``live`` ~45 ms, within every budget, aborted by
  ``--abort-if p99_ms>20`` on the p99 its device reports after probation, and rolled back by
  signed command. For each: devices sent it, devices that served it, seconds from the first bad
  report to the abort, every device back on v2; the headline figures are the worst case.
- (c) resume: v3 rolled out; the controller SIGKILLed mid-wave and started again on the same
  database; the rollout finishes with every device on v3.

    .venv/bin/python bench/fleet.py [--agents N]

Prints a table, then the figures as one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from control_harness import command_keys
from fleet_harness import GROUP, Controller, Fleet, edgewise, summary
from forge import golden_of, package_from

from agent.contract import Package, generate_keypair
from compiler.compile.loading import SourceModel
from compiler.compile.pipeline import CompileOptions, compile_model
from compiler.recipe.demo_model import train_demo_model
from compiler.recipe.digits import PREPROCESS, load_dataset
from compiler.rollout.plan import ordered

WAVES = "1,10%,50%,100%"
AGREEMENT, MIN_FRAMES = 0.9, 20  # the shadow's agreement criteria
P99_RULE_MS = 20.0  # --abort-if p99_ms>20: the laggy model serves at ~45 ms
BUDGET_MS = 150.0  # p99 of the good CNN: 0.1 ms alone, up to ~85 ms when 40 probes share 2 cores


def slow_model(path: Path, layers: int = 24, channels: int = 256) -> Path:
    """A digits-shaped classifier that is valid and deterministic but slow: ``layers`` 3×3
    convolutions of ``channels`` channels at 28×28, one weight shared by all (the file stays
    small, so only its latency differs from a good model's)."""
    rng = np.random.default_rng(2)

    def weights(shape: tuple[int, ...], std: float, name: str) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * std).astype(np.float32), name)

    inits = [
        weights((channels, 1, 3, 3), 0.5, "w0"),
        weights((channels, channels, 3, 3), np.sqrt(2 / (9 * channels)), "w"),
        weights((channels, 10), 0.1, "fc"),
    ]
    nodes = [helper.make_node("Conv", ["input", "w0"], ["h0"], pads=[1, 1, 1, 1])]
    for i in range(layers):
        nodes.append(helper.make_node("Conv", [f"h{i}", "w"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"h{i + 1}"]))
    nodes += [
        helper.make_node("GlobalAveragePool", [f"h{layers}"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def packages(root: Path, key: Path) -> dict[str, Package]:
    """v1 (compiled from the demo CNN), v2 and v3 (the same model), the slow 2.5.0 and the
    wrong 2.6.0 (each with a golden set of its own answers, so both pass the golden check)."""
    digits = load_dataset("digits", seed=0)
    model = train_demo_model(digits.train, PREPROCESS, epochs=2)
    options = CompileOptions(name="digits-cnn", version="1.0.0", signing_key=key,
                             out_dir=root / "v1", progress=False, html=False)  # fmt: skip
    v1 = compile_model(SourceModel("eager", model), digits, PREPROCESS, options).package
    slow = slow_model(root / "slow.onnx", layers=48)  # ~270 ms alone: over 150 on any board here
    # random weights: it answers its own golden set exactly and live frames at random
    wrong = slow_model(root / "wrong.onnx", layers=1, channels=8)
    laggy = slow_model(root / "laggy.onnx", layers=30, channels=128)  # ~45 ms, under the budget
    return {
        "v1": v1,
        "v2": package_from(v1, root / "v2", key, version="2.0.0"),
        "v3": package_from(v1, root / "v3", key, version="3.0.0"),
        "wrong": package_from(
            v1, root / "wrong", key, version="2.6.0", model=wrong, golden=golden_of(v1, wrong)
        ),
        "laggy": package_from(
            v1, root / "laggy", key, version="2.7.0", model=laggy, golden=golden_of(v1, laggy)
        ),
        "bad": package_from(
            v1, root / "bad", key, version="2.5.0", model=slow, golden=golden_of(v1, slow)
        ),
    }


def create(controller: Controller, package: Package, rollout_id: str, *more: str) -> None:
    done = edgewise("rollout", "create", str(package.root), "--to", f"group:{GROUP}",
                    "--waves", WAVES, "--id", rollout_id, "--db", controller.db, *more)  # fmt: skip
    assert done.returncode == 0, f"rollout create: {done.stdout}{done.stderr}"


class Rollouts:
    """The controller's database, read as `edgewise rollout status` reads it."""

    def __init__(self, db: str):
        from compiler.rollout.store import open_store

        self.store = open_store(db)

    def state(self, rollout_id: str) -> str | None:
        rollout = self.store.get(rollout_id)
        return None if rollout is None else str(rollout.state)

    def wait(self, rollout_id: str, states: tuple[str, ...], timeout: float) -> float:
        """Seconds until the rollout is in one of ``states`` (the store has no notification:
        it is read every 0.2 s)."""
        start = time.monotonic()
        while self.state(rollout_id) not in states:
            assert time.monotonic() - start < timeout, f"{rollout_id}: {self.state(rollout_id)}"
            time.sleep(0.2)
        return time.monotonic() - start

    def counts(self, rollout_id: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.store.devices(rollout_id).values():
            counts[record.state] = counts.get(record.state, 0) + 1
        return counts


def model_bytes(package: Package) -> int:
    return sum(path.stat().st_size for _blob, path in package.blobs())


def good_rollout(
    fleet: Fleet, controller: Controller, rollouts: Rollouts, v2: Package
) -> dict[str, Any]:
    idle_start, idle_bytes = time.monotonic(), fleet.monitor.fresh_bytes_sent()
    before = fleet.monitor.fresh_bytes_sent()
    idle_rate = (before - idle_bytes) / (time.monotonic() - idle_start)
    cpu, start = controller.cpu(), time.monotonic()
    create(controller, v2, "good")
    fleet.wait_serving(v2.manifest.version, 60 + 3 * fleet.agents)
    good_s = time.monotonic() - start
    rollouts.wait("good", ("done",), 60)
    sent = fleet.monitor.fresh_bytes_sent() - before
    net = sent - idle_rate * (time.monotonic() - start)
    size = fleet.agents * model_bytes(v2)
    return {
        "good_rollout_s": round(good_s, 1),
        "good_rollout_done_s": round(time.monotonic() - start, 1),
        "model_bytes": model_bytes(v2),
        "broker_bytes_sent": sent,
        "bytes_vs_n_size": round(sent / size, 3),
        "bytes_vs_n_size_net_of_idle": round(net / size, 3),
        "idle_bytes_per_s": round(idle_rate),
        "controller_cpu_s": round(controller.cpu() - cpu, 2),
    }


def failing_rollout(
    fleet: Fleet,
    controller: Controller,
    rollouts: Rollouts,
    case: tuple[str, Package, str, list[str]],
    bad_report: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:
    """``case`` = (figure prefix, package, rollout id, more `rollout create` flags). How many
    devices were sent the package and how many served it, seconds from the first report that
    ``bad_report`` recognises to the abort, and whether every device is back on v2."""
    prefix, package, rollout_id, more = case
    version = package.manifest.version
    seen_from = len(fleet.monitor.events)
    create(controller, package, rollout_id, *more)
    rollouts.wait(rollout_id, ("aborted", "done"), 120 + 3 * fleet.agents)
    aborted_at = time.monotonic()
    back_s = fleet.wait_serving("2.0.0", 60)
    events = [e for e in fleet.monitor.events[seen_from:] if version_of(e) == version]
    reports = [e["seen"] for e in events if bad_report(e)]
    # the rollback command's outcome on the device, as it reported it (not the store's 0.2 s poll)
    restored = [e["seen"] for e in events if e.get("state") == "rolled_back"]
    rollout = rollouts.store.get(rollout_id)
    return {
        f"{prefix}_state": rollouts.state(rollout_id),
        f"{prefix}_devices_sent": len({e["device"] for e in events}),
        f"{prefix}_devices_exposed": len({e["device"] for e in events if e["state"] == "active"}),
        f"{prefix}_abort_s": round(aborted_at - min(reports), 2) if reports else None,
        f"{prefix}_back_on_previous_s": round(back_s, 2),
        f"{prefix}_rolled_back_s": round(max(restored) - min(reports), 2)
        if restored and reports
        else None,
        f"{prefix}_all_back": fleet.all_serving("2.0.0"),
        f"{prefix}_devices_states": rollouts.counts(rollout_id),
        f"{prefix}_reason": rollout.reason if rollout else None,
    }


def bad_rollouts(fleet: Fleet, controller: Controller, rollouts: Rollouts,
                 built: dict[str, Package]) -> dict[str, Any]:  # fmt: skip
    """The three ways a model that passes its golden check is bad, each first to one device."""
    # an id whose first device has a budget: the first wave meets the refusal
    budget_id = next(f"budget-{i}" for i in range(1000)
                     if budgeted(ordered(f"budget-{i}", fleet.devices)[0]))  # fmt: skip
    agreement = ["--agreement", f"{AGREEMENT}", "--min-frames", f"{MIN_FRAMES}"]
    rule = ["--abort-if", f"p99_ms>{P99_RULE_MS}"]
    figures: dict[str, Any] = {}
    for case, bad_report in (
        (("budget", built["bad"], budget_id, []), rejected),
        (("wrong", built["wrong"], "wrong", agreement), judged_wrong),
        (("live", built["laggy"], "live", rule), slow_pass),
    ):
        figures |= failing_rollout(fleet, controller, rollouts, case, bad_report)
    cases = ("budget", "wrong", "live")
    return {
        # the headline figures: the worst over the three cases
        "bad_devices_exposed": max(figures[f"{c}_devices_exposed"] for c in cases),
        "bad_devices_sent_max": max(figures[f"{c}_devices_sent"] for c in cases),
        "abort_s": max((figures[f"{c}_abort_s"] or float("inf")) for c in cases),
        "all_rolled_back": all(figures[f"{c}_all_back"] for c in cases),
        **figures,
    }


def rejected(event: dict[str, Any]) -> bool:
    return event.get("type") == "deployment" and event["state"] in ("rejected", "rolled_back")


def version_of(event: dict[str, Any]) -> str | None:
    """The version a deployment event (model) or a shadow event (candidate) is about."""
    return (event.get("model") or event.get("candidate") or {}).get("version")


def judged_wrong(event: dict[str, Any]) -> bool:
    """A shadow report the controller can judge on (enough frames) that is under the bar."""
    return (
        event.get("type") == "shadow"
        and (event.get("frames") or 0) >= MIN_FRAMES
        and (event.get("agreement_lower") or 1.0) < AGREEMENT
    )


def slow_pass(event: dict[str, Any]) -> bool:
    """Probation passed with a p99 over the rollout's rule: the figure the rule aborts on."""
    return event.get("state") == "passed" and (event.get("p99_ms") or 0) > P99_RULE_MS


def resume(fleet: Fleet, controller: Controller, rollouts: Rollouts, v3: Package) -> dict[str, Any]:
    """Kill the controller once a wave past the first is under way, start another."""
    create(controller, v3, "resume")
    start = time.monotonic()
    while True:
        counts = rollouts.counts("resume")
        if counts.get("succeeded", 0) >= 2 and counts.get("sent", 0) >= 1:
            break
        assert rollouts.state("resume") == "running", f"resume: {rollouts.state('resume')}"
        assert time.monotonic() - start < 60 + 3 * fleet.agents, (
            f"resume never went mid-wave: {counts}"
        )
        time.sleep(0.1)  # the store has no notification
    at_kill = dict(counts)
    controller.kill()
    restarted = time.monotonic()
    controller.start()
    state_ok = rollouts.wait("resume", ("done", "aborted"), 120 + 3 * fleet.agents) >= 0
    fleet.wait_serving(v3.manifest.version, 60)
    return {
        "resume_devices_at_kill": at_kill,
        "resume_state": rollouts.state("resume"),
        "resume_ok": state_ok and rollouts.state("resume") == "done" and fleet.all_serving("3.0.0"),
        "resume_after_restart_s": round(time.monotonic() - restarted, 1),
        "resume_total_s": round(time.monotonic() - start, 1),
    }


def budgeted(device: str) -> bool:
    return int(device.rsplit("-", 1)[1]) % 2 == 1


def budget(device: str) -> str:
    return f"max_latency_ms = {BUDGET_MS}" if budgeted(device) else ""


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(agents: int, root: Path) -> dict[str, Any]:
    keys = (root / "signing.key", root / "signing.pub")
    generate_keypair(*keys)
    ckeys = command_keys(root / "command-keys")
    built = packages(root / "packages", keys[0])
    memory_before = available_mb()
    fleet = Fleet(root / "fleet", built["v1"], keys[1], ckeys[1], agents=agents, budget=budget)
    start = time.monotonic()
    fleet.start()
    figures: dict[str, Any] = {"agents": agents}
    try:
        figures["fleet_up_s"] = round(fleet.wait_serving("1.0.0", 60 + 4 * agents), 1)
        figures |= steady(fleet, memory_before)
        controller = Controller(fleet, f"{root / 'rollouts.db'}", keys[0], ckeys[0]).start()
        rollouts = Rollouts(controller.db)
        try:
            figures |= good_rollout(fleet, controller, rollouts, built["v2"])
            figures |= bad_rollouts(fleet, controller, rollouts, built)
            figures |= resume(fleet, controller, rollouts, built["v3"])
        finally:
            controller.stop()
            figures["controller_cpu_s_total"] = round(controller.cpu(), 2)
    finally:
        fleet.stop()
    figures["bench_s"] = round(time.monotonic() - start, 1)
    return figures


def steady(fleet: Fleet, memory_before: float) -> dict[str, Any]:
    """RSS and CPU of the agents serving at 2 fps, CPU over a 10 s window (a measurement
    window, not a wait), and the N this machine could hold by memory and by CPU."""
    before = {f.device: f.cpu_s for f in fleet.figures()}
    window = time.monotonic()
    time.sleep(10)
    after = fleet.figures()
    elapsed = time.monotonic() - window
    cpu_percent = 100 * sum(f.cpu_s - before.get(f.device, f.cpu_s) for f in after) / elapsed
    rss = summary(after)
    per_agent_cpu = cpu_percent / fleet.agents
    return {
        "agent_rss_mb_mean": rss["agent_rss_mb_mean"],
        "agent_rss_mb_max": rss["agent_rss_mb_max"],
        "agent_pss_mb_mean": rss["agent_pss_mb_mean"],
        "agents_rss_mb_total": round(sum(f.rss_mb for f in after)),
        "agents_cpu_percent": round(cpu_percent, 1),
        "memory_available_mb_before": round(memory_before),
        # PSS, not RSS: the shared libraries are paid once for the whole fleet
        "n_limit_memory": int(memory_before / rss["agent_pss_mb_mean"]),
        "n_limit_cpu": int(100 * cores() / per_agent_cpu) if per_agent_cpu > 0 else None,
    }


def cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def print_table(figures: dict[str, Any]) -> None:
    print(f"{'figure':<32}{'value':>24}")
    for key, value in figures.items():
        print(f"{key:<32}{json.dumps(value):>24}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=40)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    figures = run(args.agents, root)
    print_table(figures)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
