"""A corpus of hostile MQTT payloads for every topic the agent subscribes to.

    corpus(scene, seed) -> list[Payload]      # ≥ 2,000 payloads, deterministic for a seed

Kinds (``Payload.kind``) are grouped by what they attack:

- ``issue:*``     the eight single messages that killed the deployer thread (issue 12's table);
- ``json:*``      NaN/Infinity, 1e999, lone surrogates, nesting 999…100,000 deep, huge integers;
- ``wire:*``      random bytes, non-UTF-8, UTF-16, BOMs, truncated JSON, non-objects;
- ``envelope:*``  a valid signed envelope with a wrong type at every field, a field missing, an
                  unknown field, seeded random mutations (the signature no longer matches);
- ``signed:*``    signed by the trusted key yet wrong (a wrong type at a field, re-signed; absurd
                  versions, ``golden_atol`` 0, names ``con``/``current``, 100,000 chunks, a
                  500,000,000-byte model, 2 labels for 10 scores, uint8 input for a float model, a
                  golden file that is not an npz of arrays), replays, wrong target, untrusted key,
                  valid but unsigned;
- ``chunk:*``     hostile bytes on the chunk topics of a signed manifest, so the agent fetches them;
- ``amplify:*``   payloads whose error message could quote them (a 1.26 MB key id …);
- ``flood:*``     8 MiB messages (over a 1 MiB broker cap) and ones just under the cap;
- ``empty:*``     empty retained messages (they withdraw a deployment: legal, must be harmless);
- ``sensor:*``    for an ``mqtt:`` sensor source: garbage, NaN, 1e400, 10**400, deep nesting.

Signed payloads need the session's trusted signing key and the package the device serves; their
bytes differ between sessions (keys, timestamps) but which payloads exist, and in what order,
depends only on the seed. ``Payload.before`` lists chunk publications (retained) that must be on
the broker before the payload, so that the agent really downloads them.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.contract import Package, Topics, key_id, load_private_key

REASON_MAX = 256  # issue 12: reasons in events and status, in characters
EVENT_MAX = 2048  # issue 12's goal for the largest event, in bytes
ECHO_RUN = 64  # a reason holding this many consecutive characters of the payload echoes it


@dataclass(frozen=True)
class Payload:
    kind: str
    topic: str
    data: bytes
    retain: bool = True
    note: str = ""  # which field or variant, for a failure message
    before: tuple[tuple[str, bytes], ...] = ()  # (chunk topic, bytes) published retained first
    slow: bool = False  # makes the deployer download or probe (seconds), not just parse

    @property
    def label(self) -> str:
        return f"{self.kind}[{self.note}]" if self.note else self.kind

    @property
    def published(self) -> int:
        """Messages this payload puts on the wire (its chunks included)."""
        return 1 + len(self.before)


@dataclass
class Scene:
    """Where the corpus is aimed: the device, its topics, the trusted key and what it serves."""

    topics: Topics
    device: str
    groups: tuple[str, ...]
    key: Path  # the trusted private signing key
    base: Package  # the package the device serves when the corpus starts
    work: Path  # where forged packages are written
    sensor_topic: str = "edgewise-test/sensor/vibration"
    _key_id: str = field(default="", init=False)

    @property
    def deploy_topics(self) -> list[str]:
        """Device, groups, fleet-wide: every deploy scope the agent subscribes to."""
        return [
            self.topics.deploy_device(self.device),
            *(self.topics.deploy_group(g) for g in self.groups),
            self.topics.deploy_all(),
        ]

    @property
    def key_id(self) -> str:
        if not self._key_id:
            self._key_id = key_id(load_private_key(self.key).public_key())
        return self._key_id


def spread(scene: Scene, kind: str, items: Iterable[tuple[str, bytes]]) -> list[Payload]:
    """(note, bytes) pairs over the deploy scopes in turn, so every scope gets every kind."""
    scopes = scene.deploy_topics
    return [
        Payload(kind, scopes[i % len(scopes)], data, note=note)
        for i, (note, data) in enumerate(items)
    ]


def everywhere(scene: Scene, kind: str, items: Iterable[tuple[str, bytes]]) -> list[Payload]:
    """(note, bytes) pairs on every deploy scope (the issue's rows killed the thread on any)."""
    return [
        Payload(kind, topic, data, note=note)
        for note, data in items
        for topic in scene.deploy_topics
    ]


def corpus(scene: Scene, seed: int = 12) -> list[Payload]:
    """Every hostile payload, in publishing order: first the signed ones that make the agent
    download or probe (each hostile chunk just before the manifest that asks for it), then the
    cheap ones shuffled (seeded), last the signed manifests that today's agent installs (absurd
    version …), so that they do not shadow the rest. ≥ 2,000 payloads.

    The slow ones go first because a publisher waits for each one's outcome (the deployer keeps
    only the latest message per topic) and rejections are rate-limited: after a flood of cheap
    ones an outcome could be held back and never seen."""
    from hostile_signed import installable, signed_cheap, signed_slow
    from hostile_wire import deploy_payloads, sensor_payloads

    rng = random.Random(seed)
    cheap = deploy_payloads(scene, rng) + signed_cheap(scene, rng) + sensor_payloads(scene, rng)
    rng.shuffle(cheap)
    return signed_slow(scene) + cheap + installable(scene)


def subset(payloads: list[Payload], per_kind: int, seed: int = 12) -> list[Payload]:
    """A short run's corpus, in the original order: at most ``per_kind`` payloads of each kind
    (seeded pick), except that ``chunk:`` kinds (hostile chunks and the manifest that makes the
    agent fetch them) and the installable signed manifests are kept whole."""
    rng = random.Random(seed)
    by_kind: dict[str, list[int]] = {}
    for index, payload in enumerate(payloads):
        by_kind.setdefault(payload.kind, []).append(index)
    keep: set[int] = set()
    for kind, indices in by_kind.items():
        whole = kind.startswith(("chunk:", "signed:installs"))
        keep.update(indices if whole else rng.sample(indices, min(per_kind, len(indices))))
    return [p for i, p in enumerate(payloads) if i in keep]


def count_messages(payloads: Iterable[Payload]) -> int:
    return sum(p.published for p in payloads)


# --- what a reason and an event may look like -------------------------------------------------


def _hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def echoes(text: str, payload: bytes) -> bool:
    """Does ``text`` quote ``ECHO_RUN`` or more consecutive characters of ``payload``? Runs of
    hex digits are exempt: a sha256 the manifest declares is an identifier, and naming it is how
    a hash mismatch is explained. Only the start of an over-long text is searched (its length is
    a problem of its own)."""
    text, half = text[: 4 * REASON_MAX], ECHO_RUN // 2
    if len(text) < ECHO_RUN or len(payload) < ECHO_RUN:
        return False
    for source in {payload.decode("utf-8", "replace"), payload.decode("latin-1")}:
        # Any run of ECHO_RUN characters contains one of these aligned half-runs.
        for start in range(0, len(text) - half + 1, half):
            if text[start : start + half] not in source:
                continue
            for s in range(max(0, start - half), start + 1):
                run = text[s : s + ECHO_RUN]
                if len(run) == ECHO_RUN and not _hex(run) and run in source:
                    return True
    return False


def reason_problems(reason: object, payload: bytes) -> list[str]:
    """What is wrong with a ``reason`` given for refusing ``payload`` (empty when nothing)."""
    if not isinstance(reason, str):
        return [f"reason is {type(reason).__name__}, not text"]
    problems = []
    if len(reason) > REASON_MAX:
        problems.append(f"reason is {len(reason)} characters (> {REASON_MAX})")
    if echoes(reason, payload):
        problems.append(f"reason quotes the payload: {reason[:120]!r}…")
    return problems


def event_problems(event: dict[str, Any], payload: bytes) -> list[str]:
    """An event as the deployer reports it: strict JSON, within the size goal, short reasons."""
    try:
        size = len(json.dumps(event, allow_nan=False, separators=(",", ":")).encode("utf-8"))
    except (ValueError, TypeError) as exc:  # NaN, a lone surrogate, an object json cannot write
        return [f"event is not strict JSON: {type(exc).__name__}: {str(exc)[:100]}"]
    problems = [] if size <= EVENT_MAX else [f"event is {size} bytes (> {EVENT_MAX})"]
    if "reason" in event:
        problems += reason_problems(event["reason"], payload)
    return problems


def digest(data: bytes) -> str:
    """A payload's name in a summary (a reason may quote a sha256 prefix this long)."""
    return hashlib.sha256(data).hexdigest()[:8]
