"""Setting up the devices of the hostile end-to-end run and measuring it against issue 12's goals.

``run_corpus`` is the whole scenario: the agent serving, every payload published, a valid
deployment pushed after them, and the figures (``payloads``, ``deployer_alive``,
``valid_install_after``, ``serving_gap_s_max``, ``rss_peak_mb``, ``state_dir_mb``,
``largest_event_bytes`` and a few more).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_harness import DEVICE, install
from forge import body_of
from helpers import AgentProcess
from hostile import EVENT_MAX, Payload, Scene, digest
from hostile_models import SENSOR_CHANNELS, SENSOR_WINDOW
from hostile_run import (
    DEPLOY,
    GAP_GOAL_S,
    MIB,
    RSS_GOAL_MB,
    TERMINAL,
    Publisher,
    Recorder,
    RssWatch,
    arrival_gap,
    proc_status,
    reason_troubles,
    serving_gap,
    tree_bytes,
)

from agent.contract import Package, Topics
from compiler.fleet.broker import MosquittoBroker
from compiler.recipe.demo import write_agent_config

GROUPS = ("g1",)
SENSOR_DEVICE = "sensor-1"
OUTBOX = ("outbox.db",)  # outbox.db, -wal, -shm: bounded by [outbox] max_bytes, measured apart


def start_agent(
    broker: MosquittoBroker, public_key: Path, video: Path, work: Path, package: Package,
    *, extra: str = DEPLOY, device: str = DEVICE, source: str | None = None,
) -> AgentProcess:  # fmt: skip
    """The real agent serving ``package`` (installed on its disk beforehand), in groups GROUPS;
    ``source`` replaces the config's [source] section."""
    state = work / "state"
    install(package, state)
    config = write_agent_config(
        work / "agent.toml", port=broker.port, public_keys=[public_key], video=video,
        state=state, device=device, extra=extra,
    )  # fmt: skip
    text = config.read_text().replace(
        f'id = "{device}"', f'id = "{device}"\ngroups = {list(GROUPS)!r}'.replace("'", '"')
    )
    if source is not None:
        head, _, rest = text.partition("[source]")
        text = head + source + rest[rest.index("\n\n") :]
    config.write_text(text)
    return AgentProcess(config)


def sensor_source(topic: str) -> str:
    return (
        f'[source]\nkind = "sensor"\nuri = "mqtt:{topic}"\nformat = "json"\n'
        f"window = {SENSOR_WINDOW}\nhop = 1\n"
    )


def sample(i: int) -> bytes:
    """A good sensor sample: SENSOR_CHANNELS numbers."""
    return ("[" + ",".join(str(i % 7 + c) for c in range(SENSOR_CHANNELS)) + "]").encode()


class Feeder(threading.Thread):
    """Good samples at about 30 Hz, so a sensor agent has windows to score throughout."""

    def __init__(self, publisher: Publisher, topic: str):
        super().__init__(daemon=True)
        self.publisher, self.topic, self.done = publisher, topic, threading.Event()

    def run(self) -> None:
        i = 0
        while not self.done.wait(1 / 30):
            self.publisher.publish(Payload("sample", self.topic, sample(i), retain=False))
            i += 1


@dataclass
class Stage:
    """One device under attack: its process, its state, what it says, and its memory."""

    agent: AgentProcess
    state: Path
    recorder: Recorder
    watch: RssWatch

    @classmethod
    def start(cls, agent: AgentProcess, state: Path, recorder: Recorder) -> Stage:
        watch = RssWatch(agent.proc.pid)
        watch.start()
        return cls(agent, state, recorder, watch)

    @property
    def alive(self) -> bool:
        return self.agent.proc.poll() is None

    def serving(self, count: int = 10, timeout: float = 60) -> bool:
        ok = self.recorder.wait(lambda: len(self.recorder.published_at) >= count or not self.alive,
                                timeout)  # fmt: skip
        return ok and self.alive

    def rss_peak_mb(self) -> float:
        return max(self.watch.peak, proc_status(self.agent.proc.pid, "VmHWM") or 0.0)


def version_of(payload: Payload) -> str | None:
    """The version a signed manifest payload announces (None for anything else)."""
    try:
        version = body_of(payload.data)["version"]
    except (ValueError, KeyError, TypeError):
        return None
    return version if isinstance(version, str) else None


def settle(stage: Stage, version: str, since: int, first_s: float = 3, done_s: float = 40) -> bool:
    """Wait until the deployer has dealt with ``version``: within ``first_s`` a deployment event
    for it (or, after event number ``since``, a rejection naming no model: the schema refused
    it), then a terminal one within ``done_s``. False when nothing came (the rate limit may hold
    a rejection back)."""
    rec = stage.recorder

    def answered() -> bool:
        later = rec.events[since:]
        anonymous = any(e.get("type") == "deployment" and not e.get("model") for _, _, e in later)
        return anonymous or bool(rec.deployment(version)) or not stage.alive

    if not rec.wait(answered, first_s):
        return False
    if rec.deployment(version):
        rec.wait(lambda: rec.deployment(version)[-1] in TERMINAL or not stage.alive, done_s)
    return True


def publish_all(publisher: Publisher, payloads: list[Payload], stage: Stage) -> list[str]:
    """Every payload in order, as fast as the broker takes them, except that a slow one (a
    signed manifest that makes the agent download or probe) is followed by a wait for its
    outcome: the deployer keeps only the latest message per deploy topic, and without the wait
    the next payload would replace it before it is looked at. Returns the slow payloads no
    event answered. A dead agent stops nothing: the corpus is the corpus."""
    unanswered = []
    for payload in payloads:
        refused = publisher.refused
        publisher.publish(payload)
        version = version_of(payload) if payload.slow else None
        if version is not None and publisher.refused == refused:
            since = len(stage.recorder.events)
            publisher.flush()
            if not settle(stage, version, since):
                unanswered.append(payload.label)
    publisher.flush()
    return unanswered


def install_after(publisher: Publisher, stage: Stage, valid: Package, topics: Topics,
                  backlog_s: float) -> list[str]:  # fmt: skip
    """Push a valid deployment after the corpus; the deployment states it reached within
    ``backlog_s`` (the deployer may still be working through what the corpus queued)."""
    publisher.push(valid, topics.deploy_device(DEVICE), topics)
    version, rec = valid.manifest.version, stage.recorder
    rec.wait(lambda: any(s in TERMINAL for s in rec.deployment(version)) or not stage.alive,
             backlog_s)  # fmt: skip
    return rec.deployment(version)


def run_corpus(
    broker: MosquittoBroker, stage: Stage, scene: Scene, payloads: list[Payload],
    valid: Package, backlog_s: float,
) -> dict[str, Any]:  # fmt: skip
    """The scenario; the figures as a dict (``problems`` lists reasons and events too long)."""
    began = time.time()
    publisher = Publisher(broker)
    unanswered = publish_all(publisher, payloads, stage)
    published = time.time()
    states = install_after(publisher, stage, valid, scene.topics, backlog_s)
    ended = time.time()
    # Results produced up to `ended` may still be on their way: wait for one produced after it.
    stage.recorder.wait(lambda: bool(stage.recorder.results_since(ended)) or not stage.alive, 15)
    publisher.clear(scene.deploy_topics)
    publisher.close()
    largest_model = max(scene.base.manifest.model.size, valid.manifest.model.size)
    labels = {digest(p.data): p.label for p in payloads}
    return {
        "payloads": len(payloads),
        "messages": publisher.sent + sum(len(p.before) for p in payloads),
        "refused_at_broker": publisher.refused,
        "agent_alive": stage.alive,
        "deployer_alive": any(s in TERMINAL for s in states),
        "valid_install_after": "active" in states,
        "valid_states": [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s],
        "serving_gap_s_max": round(serving_gap(stage.recorder, began, ended), 3),
        "arrival_gap_s_max": round(arrival_gap(stage.recorder, began, ended), 3),
        "rss_peak_mb": round(stage.rss_peak_mb(), 1),
        "state_dir_mb": round(tree_bytes(stage.state, skip=OUTBOX) / MIB, 3),
        "outbox_mb": round((tree_bytes(stage.state) - tree_bytes(stage.state, OUTBOX)) / MIB, 3),
        "largest_model_mb": round(largest_model / MIB, 3),
        "largest_event_bytes": stage.recorder.largest_event,
        "largest_status_bytes": stage.recorder.largest_status,
        "results": len(stage.recorder.published_at),
        "publish_s": round(published - began, 1),
        "unanswered_slow": unanswered,
        "backlog_s": round(ended - published, 1),
        "problems": reason_troubles(stage.recorder, labels) + stage.recorder.invalid,
        "window": (began, ended),
    }


def shortfalls(figures: dict[str, Any]) -> list[str]:
    """Issue 12's goals the figures miss, one line each (empty: all met)."""
    f, out = figures, []
    checks = [
        (f["agent_alive"], "the agent process died"),
        (f["deployer_alive"], f"no answer to the valid deployment ({f['valid_states']})"),
        (f["valid_install_after"], f"the valid deployment did not go active: {f['valid_states']}"),
        (f["serving_gap_s_max"] <= GAP_GOAL_S, f"{f['serving_gap_s_max']} s without a result"),
        (f["rss_peak_mb"] <= RSS_GOAL_MB, f"RSS high-water mark {f['rss_peak_mb']} MB"),
        (f["state_dir_mb"] <= 2 * f["largest_model_mb"],
         f"state_dir {f['state_dir_mb']} MB > 2 × {f['largest_model_mb']} MB"),
        (f["largest_event_bytes"] <= EVENT_MAX, f"an event of {f['largest_event_bytes']} bytes"),
        (f["largest_status_bytes"] <= EVENT_MAX, f"a status of {f['largest_status_bytes']} bytes"),
    ]  # fmt: skip
    out += [why for ok, why in checks if not ok]
    return out + f["problems"][:10]
