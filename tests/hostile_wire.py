"""Hostile payloads that need no signing key: broken JSON, broken envelopes, floods, and samples
for an ``mqtt:`` sensor topic. Anyone who may publish on a deploy or sensor topic can send these."""

from __future__ import annotations

import base64
import copy
import json
import math
import random
from typing import Any

from hostile import Payload, Scene, everywhere, spread

from agent.contract import PAYLOAD_TYPE

MIB = 1024 * 1024
# Just under a 1 MiB max_packet_size once the topic and MQTT header are added: what a capped
# broker still delivers.
NEAR_CAP = 1_040_000
Doc = Any
Items = list[tuple[str, bytes]]

# Values of the wrong type (or absurd) for any field; NaN and Infinity are written as the bare
# tokens Python's json module reads back.
WRONG: tuple[tuple[str, Any], ...] = (
    ("null", None), ("true", True), ("false", False), ("zero", 0), ("minus-one", -1),
    ("2^63", 2**63), ("-2^63-1", -(2**63) - 1), ("10^30", 10**30), ("1.5", 1.5),
    ("-0.0", -0.0), ("1e308", 1e308), ("nan", math.nan), ("inf", math.inf), ("empty", ""),
    ("long", "x" * 300), ("nul", "\x00"), ("dotdot", "../../../etc/passwd"),
    ("surrogate", "\ud800"), ("NaN-text", "NaN"), ("list", []), ("list-null", [None]),
    ("nested", [[[]]]), ("object", {}), ("object-2", {"": None}),
)  # fmt: skip


def dump(doc: Doc, ascii_only: bool = True) -> bytes:
    """JSON as a careless or hostile sender writes it: NaN allowed, surrogates passed through."""
    text = json.dumps(doc, allow_nan=True, separators=(",", ":"), ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass")


def paths(node: Doc, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every field of an envelope (lists: their first two items; ``metrics`` as one field)."""
    found = [at]
    if at[-1:] == ("metrics",):
        return found
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*at, key))
    elif isinstance(node, list):
        for index, value in enumerate(node[:2]):
            found += paths(value, (*at, index))
    return found


def set_at(doc: Doc, path: tuple[Any, ...], value: Any) -> Doc:
    if not path:
        return value
    out = copy.deepcopy(doc)
    parent = out
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return out


def drop_at(doc: Doc, path: tuple[Any, ...]) -> Doc:
    out = copy.deepcopy(doc)
    parent = out
    for step in path[:-1]:
        parent = parent[step]
    del parent[path[-1]]
    return out


def dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path) or "(root)"


def issue_rows(kid: str, valid: Doc) -> list[tuple[str, Items]]:
    """Issue 12's five unsigned messages that killed the deployer thread, and close variants."""
    entry = {"alg": "ed25519", "key_id": kid}
    return [
        ("issue:sig-null", [
            ("empty-manifest", dump({"manifest": {}, "signatures": [{**entry, "sig": None}]})),
            ("valid-manifest", dump({**valid, "signatures": [{**entry, "sig": None}]})),
        ]),
        ("issue:sig-5", [
            ("empty-manifest", dump({"manifest": {}, "signatures": [{**entry, "sig": 5}]})),
            ("sig-list", dump({"manifest": {}, "signatures": [{**entry, "sig": ["AA=="]}]})),
        ]),
        ("issue:nan", [
            ("in-manifest", b'{"manifest":{"a":NaN},"signatures":[]}'),
            ("infinity", b'{"manifest":{"a":-Infinity},"signatures":[]}'),
        ]),
        ("issue:lone-surrogate", [
            ("escaped", b'{"manifest":{"a":"\\ud800"},"signatures":[]}'),
            ("in-key", b'{"manifest":{"\\udfff":1},"signatures":[]}'),
        ]),
        ("issue:nested-1000", [
            ("bare", b"[" * 1000 + b"]" * 1000),
            ("in-manifest", b'{"manifest":' + b"[" * 1000 + b"]" * 1000 + b',"signatures":[]}'),
        ]),
    ]  # fmt: skip


def json_edges(kid: str) -> Items:
    """Valid-looking JSON that strict JSON (or Python's parser) refuses or mangles."""
    sig = f'"signatures":[{{"alg":"ed25519","key_id":"{kid}","sig":"AAAA"}}]'
    items: Items = []
    for depth in (100, 500, 999, 5000, 100_000):
        items.append((f"arrays-{depth}", b"[" * depth + b"]" * depth))
        items.append((f"objects-{depth}", b'{"a":' * depth + b"1" + b"}" * depth))
    for token in ("NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" * 5000, "-0"):
        items.append((f"number-{token[:8]}", f'{{"manifest":{{"n":{token}}},{sig}}}'.encode()))
        bare = f'{{"manifest":{{}},"signatures":[{token}]}}'
        items.append((f"sig-number-{token[:8]}", bare.encode()))
    for text in ("\\ud800", "\\udc00\\ud800", "\\u0000", "\\ud83d"):
        items.append((f"string-{text}", f'{{"manifest":{{"name":"{text}"}},{sig}}}'.encode()))
        bare = f'{{"manifest":{{}},"signatures":[{{"key_id":"{text}"}}]}}'
        items.append((f"key-id-{text}", bare.encode()))
    items.append(("duplicate-keys", f'{{"manifest":{{}},"manifest":[],{sig},{sig}}}'.encode()))
    return items


def structural(valid: bytes) -> Items:
    """Not an envelope at all, or not in UTF-8."""
    items: Items = [
        (repr(raw)[:24], raw)
        for raw in (b"null", b"[]", b'"manifest"', b"0", b"true", b"{}", b" ", b"\n", b"\x00",
                    b'{"manifest":{}}', b'{"signatures":[]}', b'{"manifest":{},"signatures":{}}',
                    b'{"manifest":[],"signatures":[]}', b'{"manifest":"","signatures":""}')
    ]  # fmt: skip
    text = valid.decode()
    items += [
        ("utf-16-le", text.encode("utf-16-le")), ("utf-16-be", text.encode("utf-16-be")),
        ("utf-16-bom", text.encode("utf-16")), ("utf-8-bom", b"\xef\xbb\xbf" + valid),
        ("utf-32", text.encode("utf-32")),
    ]  # fmt: skip
    return items


def non_utf8(valid: bytes, rng: random.Random, count: int) -> Items:
    bad = (b"\xff", b"\xc0\xaf", b"\x80", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80")
    items = []
    for i in range(count):
        at = rng.randrange(len(valid))
        items.append((f"{bad[i % len(bad)]!r}@{at}", valid[:at] + bad[i % len(bad)] + valid[at:]))
    return items


def truncations(valid: bytes, rng: random.Random, count: int) -> Items:
    cuts = {1, 2, len(valid) // 2, len(valid) - 1, *rng.sample(range(3, len(valid) - 1), count)}
    return [(f"at-{cut}", valid[:cut]) for cut in sorted(cuts)]


def random_bytes(rng: random.Random, count: int) -> Items:
    sizes = (1, 2, 7, 64, 1000, 65_536, 65_537, 300_000)
    picks = [sizes[i % len(sizes)] for i in range(count)]
    return [(f"{size}B", rng.randbytes(size)) for size in picks]


def wrong_types(valid: Doc) -> Items:
    """A wrong type at every field of a valid envelope (the signature no longer matches)."""
    return [
        (f"{dotted(path)}={name}", dump(set_at(valid, path, value)))
        for path in paths(valid)
        for name, value in WRONG
    ]


def get_at(doc: Doc, path: tuple[Any, ...]) -> Doc:
    for step in path:
        doc = doc[step]
    return doc


def missing_and_extra(valid: Doc) -> Items:
    """Each field left out, and an unknown field in each object."""
    items = [(f"without-{dotted(path)}", dump(drop_at(valid, path))) for path in paths(valid)[1:]]
    for path in paths(valid):
        if isinstance(get_at(valid, path), dict):
            extra = set_at(valid, (*path, "x-unknown"), 1)
            items.append((f"extra-in-{dotted(path)}", dump(extra)))
    return items


def mutants(valid: Doc, rng: random.Random, count: int) -> Items:
    """Seeded random mutations of a valid envelope: 1-3 field edits, then maybe byte edits."""
    fields = paths(valid)
    items: Items = []
    for i in range(count):
        doc, notes = valid, []
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(fields)
            try:
                name, value = rng.choice(WRONG)
                if rng.random() < 0.2:
                    name, value = "huge-list", [None] * rng.choice((1000, 20_000))
                doc = set_at(doc, path, value)
                notes.append(f"{dotted(path)}={name}")
            except (KeyError, IndexError, TypeError):
                continue  # an earlier edit removed this field's parent
        raw = bytearray(dump(doc, ascii_only=rng.random() < 0.7))
        for _ in range(rng.choice((0, 0, 1, 3))):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
            notes.append("byte")
        items.append((f"{i}:{'+'.join(notes)}", bytes(raw)))
    return items


def _envelope(*signatures: dict[str, Any], manifest: Any = None) -> bytes:
    return dump({"manifest": {} if manifest is None else manifest, "signatures": list(signatures)})


def amplifiers(kid: str) -> Items:
    """Payloads that an error message quoting its input would blow up (a 1.26 MB one, too)."""
    many = [{"key_id": f"k{i}", "alg": "ed25519", "sig": "AA=="} for i in range(30_000)]
    return [
        ("key-id-1.26MB", _envelope({"key_id": "A" * 1_260_000})),
        ("key-id-near-cap", _envelope({"key_id": "B" * 1_000_000})),
        ("alg-near-cap", _envelope({"key_id": kid, "alg": "C" * 900_000})),
        ("sig-near-cap", _envelope({"key_id": kid, "alg": "ed25519", "sig": "D" * 900_000})),
        ("30k-signatures", _envelope(*many)),
        ("manifest-string", _envelope(manifest="E" * 1_000_000)),
        ("dsse-keyid-1.26MB", _dsse({"keyid": "A" * 1_260_000, "sig": "AA=="})),
        ("dsse-sig-near-cap", _dsse({"keyid": kid, "sig": "D" * 900_000})),
        ("dsse-type-near-cap", _dsse(payload_type="C" * 900_000)),
        ("dsse-payload-string", _dsse(payload=b'"' + b"E" * 700_000 + b'"')),
    ]


def in_payload(valid: Doc, items: Items) -> Items:
    """Each item's bytes as the payload of the served DSSE envelope (its signature kept)."""
    return [
        (name, dump({**valid, "payload": base64.b64encode(raw).decode()})) for name, raw in items
    ]


def _dsse(
    *signatures: dict[str, Any], payload: bytes = b"{}", payload_type: str = PAYLOAD_TYPE
) -> bytes:
    encoded = base64.b64encode(payload).decode()
    return dump({"payloadType": payload_type, "payload": encoded, "signatures": list(signatures)})


_EIGHT_MIB: dict[int, bytes] = {}


def floods(rng: random.Random, big: int, near: int) -> Items:
    """8 MiB messages (a 1 MiB-capped broker refuses them; they share one buffer here, the
    receiver still gets a copy each) and distinct ones just under the cap, which it delivers."""
    eight = _EIGHT_MIB.setdefault(0, bytes(range(256)) * (8 * MIB // 256))
    items: Items = [(f"8MiB-{i}", eight) for i in range(big)]
    for i in range(near):
        body = (b'{"manifest":"' + b"F" * NEAR_CAP + b'"}') if i % 2 else rng.randbytes(NEAR_CAP)
        items.append((f"near-cap-{i}", b"%d" % i + body[: NEAR_CAP - 8]))
    return items


def deploy_payloads(scene: Scene, rng: random.Random) -> list[Payload]:
    """Every unsigned hostile payload for the deploy scopes."""
    valid_bytes = scene.base.envelope
    valid = json.loads(valid_bytes)
    out: list[Payload] = []
    for kind, items in issue_rows(scene.key_id, valid):
        out += everywhere(scene, kind, items * 3)  # again and again: a refused payload returns
    out += spread(scene, "json:edge", json_edges(scene.key_id))
    out += spread(scene, "wire:structural", structural(valid_bytes))
    out += spread(scene, "wire:non-utf8", non_utf8(valid_bytes, rng, 30))
    out += spread(scene, "wire:truncated", truncations(valid_bytes, rng, 40))
    out += spread(scene, "wire:random-bytes", random_bytes(rng, 48))
    out += spread(scene, "envelope:wrong-type", wrong_types(valid))
    out += spread(scene, "envelope:missing-or-extra", missing_and_extra(valid))
    out += spread(scene, "envelope:mutant", mutants(valid, rng, 300))
    body = json.loads(base64.b64decode(valid["payload"]))  # the manifest, carried unsigned
    out += spread(scene, "payload:wrong-type", in_payload(valid, wrong_types(body)))
    out += spread(scene, "payload:missing-or-extra", in_payload(valid, missing_and_extra(body)))
    old = {"manifest": body, "signatures": [{"key_id": scene.key_id, "alg": "ed25519",
                                             "sig": valid["signatures"][0]["sig"]}]}  # fmt: skip
    out += spread(scene, "v1:wrong-type", wrong_types(old))
    out += spread(scene, "v1:mutant", mutants(old, rng, 100))
    out += spread(scene, "amplify:echo", amplifiers(scene.key_id))
    out += spread(scene, "flood:8mib", floods(rng, 40, 0))
    out += spread(scene, "flood:near-cap", floods(rng, 0, 40))
    out += everywhere(scene, "empty:retained", [("withdraw", b"")])
    return out


def sensor_samples(rng: random.Random) -> Items:
    """What a sensor topic may carry besides numbers."""
    items: Items = [(repr(raw)[:24], raw) for raw in (
        b"", b" ", b"\n", b"1,2", b"[1,2]", b"oops", b"1,2,3", b"[1]", b"[[1,2]]", b"{}", b"[]",
        b"NaN,1", b"nan,nan", b"inf,1", b"[NaN,1]", b"[Infinity,1]", b"1e400,1", b"[1e400,1]",
        b"[1e39,1]", b"-0,0", b"0x10,1", b"1_000,2", b"\xd9\xa1,\xd9\xa2", b"[true,false]",
        b'{"a":1,"b":true}', b'{"a":"1","b":2}', b'{"\\ud800":1,"b":2}', b'"\\ud800"',
        b"1,2\n3,4", b"\xff\xfe", b"\x00\x00", b"1" * 5000, b"[" + b"1" * 400 + b",1]",
    )]  # fmt: skip
    items.append(("int-10^400", b"[" + b"1" + b"0" * 400 + b",1]"))
    items.append(("int-10^400-object", b'{"a":1' + b"0" * 400 + b',"b":1}'))
    for depth in (100, 999, 1000, 100_000):
        items.append((f"nested-{depth}", b"[" * depth + b"]" * depth))
    items.append(("100k-numbers-csv", b"1," * 100_000 + b"1"))
    items.append(("100k-numbers-json", b"[" + b"1," * 100_000 + b"1]"))
    items += [(f"random-{i}", rng.randbytes(rng.choice((3, 100, 5000)))) for i in range(30)]
    items += floods(rng, 4, 6)
    return items


def _sensor_kind(note: str) -> str:
    for prefix, kind in (("8MiB", "flood"), ("near-cap", "flood"), ("nested", "nested"),
                         ("int-10^400", "huge-int"), ("random", "random-bytes")):  # fmt: skip
        if note.startswith(prefix):
            return f"sensor:{kind}"
    return "sensor:sample"


def sensor_payloads(scene: Scene, rng: random.Random) -> list[Payload]:
    """Every sensor sample three times over (a source has no memory of what it refused)."""
    return [
        Payload(_sensor_kind(note), scene.sensor_topic, data, retain=False, note=note)
        for note, data in sensor_samples(rng) * 3
    ]
