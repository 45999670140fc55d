"""Hostile-payload benchmark (issue 12): the whole corpus of tests/hostile.py (≥ 2,000 payloads on
every deploy scope, the chunk topics and an ``mqtt:`` sensor topic) at real agents on a real
Mosquitto with the shipped 1 MiB max_packet_size, then a valid deployment.

    .venv/bin/python bench/hostile.py [--per-kind N] [--seed S]

Two agents: the demo model on a digits video (the deploy scopes and chunk topics are aimed at
it) and a sensor model reading the ``mqtt:`` topic. Prints a table, then the figures as one JSON
object on the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from device_harness import DEVICE
from hostile import EVENT_MAX, Scene, corpus, subset
from hostile_e2e import (
    GROUPS,
    SENSOR_DEVICE,
    Feeder,
    Stage,
    run_corpus,
    sensor_source,
    start_agent,
)
from hostile_models import sensor_package
from hostile_run import GAP_GOAL_S, RSS_GOAL_MB, Publisher, Recorder, capped_broker, serving_gap

from agent.contract import Package, Topics, generate_keypair
from compiler.compile.loading import SourceModel
from compiler.compile.pipeline import CompileOptions, compile_model
from compiler.recipe.demo_model import train_demo_model
from compiler.recipe.digits import PREPROCESS, load_dataset
from compiler.recipe.video import write_digits_video

TOPICS = Topics()


def packages(root: Path, key: Path) -> tuple[Package, Package]:
    """The demo CNN as 1.0.0 (pruned, int8: what the device serves) and 1.1.0 (unpruned, int8,
    larger: the valid deployment after the corpus)."""
    data = load_dataset("digits", seed=0)
    model = train_demo_model(data.train, PREPROCESS, epochs=3, progress=False)
    out = []
    for version, prune in (("1.0.0", 0.5), ("1.1.0", None)):
        options = CompileOptions(
            name="digits-cnn", version=version, signing_key=key, out_dir=root / version,
            prune_ratio=prune, chunk_size=64 * 1024, progress=False, html=False,
            max_accuracy_drop=100.0,  # accuracy is not what this bench measures
        )  # fmt: skip
        out.append(compile_model(SourceModel("eager", model), data, PREPROCESS, options).package)
    write_digits_video(root / "digits.avi", data.test, count=60, frames_per_digit=3, seed=1)
    return out[0], out[1]


def run(root: Path, per_kind: int | None, seed: int) -> dict[str, Any]:
    key, pub = root / "signing.key", root / "signing.pub"
    generate_keypair(key, pub)
    base, valid = packages(root, key)
    scene = Scene(TOPICS, DEVICE, GROUPS, key, base, root / "forged")
    payloads = corpus(scene, seed)
    payloads = payloads if per_kind is None else subset(payloads, per_kind, seed)
    broker = capped_broker()
    video = root / "digits.avi"
    main = start_agent(broker, pub, video, root / "main", base)
    source = sensor_source(scene.sensor_topic)
    sensor_pkg = sensor_package(root / "sp", key)
    sensor = start_agent(broker, pub, video, root / "sensor", sensor_pkg, device=SENSOR_DEVICE,
                         source=source)  # fmt: skip
    stage = Stage.start(main, root / "main" / "state", Recorder(broker, TOPICS, DEVICE))
    sensing = Stage.start(
        sensor, root / "sensor" / "state", Recorder(broker, TOPICS, SENSOR_DEVICE)
    )
    feeder = Feeder(Publisher(broker), scene.sensor_topic)
    feeder.start()
    try:
        if not (stage.serving() and sensing.serving()):
            raise SystemExit(f"the agents never served\n{main.output()[-2000:]}")
        figures = run_corpus(broker, stage, scene, payloads, valid, backlog_s=600)
        began, ended = figures.pop("window")
        figures["sensor_alive"] = sensing.alive
        figures["sensor_gap_s_max"] = round(serving_gap(sensing.recorder, began, ended), 3)
        figures["sensor_rss_peak_mb"] = round(sensing.rss_peak_mb(), 1)
    finally:
        feeder.done.set()
        figures_exit = (main.stop(), sensor.stop())
        broker.close()
    figures["exit_codes"] = list(figures_exit)
    return figures


GOALS = [
    ("payloads", "≥ 2,000", lambda f: f["payloads"] >= 2000),
    ("deployer_alive", "true", lambda f: f["deployer_alive"]),
    ("valid_install_after", "true", lambda f: f["valid_install_after"]),
    ("serving_gap_s_max", f"≤ {GAP_GOAL_S:g} s", lambda f: f["serving_gap_s_max"] <= GAP_GOAL_S),
    ("rss_peak_mb", f"≤ {RSS_GOAL_MB:.0f} MB", lambda f: f["rss_peak_mb"] <= RSS_GOAL_MB),
    ("state_dir_mb", "≤ 2 × largest model",
     lambda f: f["state_dir_mb"] <= 2 * f["largest_model_mb"]),
    ("largest_event_bytes", f"≤ {EVENT_MAX:,}", lambda f: f["largest_event_bytes"] <= EVENT_MAX),
    ("sensor_alive", "true", lambda f: f["sensor_alive"]),
    ("sensor_gap_s_max", f"≤ {GAP_GOAL_S:g} s", lambda f: f["sensor_gap_s_max"] <= GAP_GOAL_S),
    ("sensor_rss_peak_mb", f"≤ {RSS_GOAL_MB:.0f} MB",
     lambda f: f["sensor_rss_peak_mb"] <= RSS_GOAL_MB),
]  # fmt: skip
OTHER = (
    "messages", "refused_at_broker", "agent_alive", "valid_states", "arrival_gap_s_max",
    "largest_status_bytes", "largest_model_mb", "outbox_mb", "results", "publish_s", "backlog_s",
    "unanswered_slow", "exit_codes",
)  # fmt: skip


def table(figures: dict[str, Any]) -> None:
    print("Hostile corpus at the demo agent (deploy scopes, chunk topics) and a sensor agent")
    print(f"  {'figure':<22} {'measured':>24} {'goal':>22}  met")
    for name, goal, met in GOALS:
        print(f"  {name:<22} {figures[name]!s:>24} {goal:>22}  {'yes' if met(figures) else 'NO'}")
    for name in OTHER:
        print(f"  {name:<22} {figures[name]!s:>24}")
    missed = [f"{name} misses its goal ({goal})" for name, goal, met in GOALS if not met(figures)]
    for line in missed + figures["problems"][:10] or ["all goals met"]:
        print(f"  - {line}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-kind", type=int, help="a sample: at most N payloads of each kind")
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgewise-hostile-") as tmp:
        figures = run(Path(tmp), args.per_kind, args.seed)
    table(figures)
    keys = [name for name, _, _ in GOALS] + list(OTHER)
    print(json.dumps({key: figures[key] for key in keys}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
