"""Issue 12, in process: bounded containers, the fetcher's window and file, the quarantine's key
and cap, incoming/ pruning, failed slots, golden files and ONNX Runtime's telemetry."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from agent.comms.bounded import DropOldest, Mailbox, RecentSet
from agent.comms.guard import Boundary, Oversize
from agent.contract import BlobSpec, ClassificationSpec, Topics, describe_blob
from agent.delivery.fetcher import ChunkFetcher, FetchStats, _Window
from agent.delivery.store import MAX_QUARANTINE, ModelStore
from agent.inference.golden import GoldenError, load_golden

# --- bounded containers --------------------------------------------------------------------


def test_mailbox_keeps_the_latest_per_key_and_a_fixed_number_of_keys() -> None:
    box: Mailbox[bytes] = Mailbox(max_keys=3)
    for i in range(1000):
        assert box.put(f"t{i % 3}", str(i).encode())
    assert len(box) == 3
    assert not box.put("t4", b"x")  # a fourth key is refused, nothing is held for it
    assert box.get(0) == ("t1", b"997")  # the least recently updated first
    assert box.pending() == {"t2": b"998", "t0": b"999"}
    assert box.get(0) == ("t2", b"998") and box.get(0) == ("t0", b"999")
    assert box.get(0.01) is None


def test_recent_set_forgets_the_oldest() -> None:
    seen = RecentSet(capacity=100)
    for i in range(1000):
        seen.add(str(i))
    assert len(seen) == 100 and "999" in seen and "899" not in seen and "900" in seen


def test_drop_oldest_is_bounded_by_count_and_bytes() -> None:
    queue: DropOldest[bytes] = DropOldest(max_items=10, max_bytes=1000)
    for i in range(100):
        queue.put(bytes([i]) * 300, 300)
    assert len(queue) == 3 and queue.dropped == 97
    assert queue.get(0) == bytes([97]) * 300


# --- the fetcher ---------------------------------------------------------------------------


class FakeLink:
    """Delivers a blob's retained chunks (``published``) the moment the fetcher subscribes."""

    def __init__(self, published: dict[str, bytes]):
        self.published = published
        self.handler: Callable[[str, bytes], None] | None = None
        self.held: set[str] = set()
        self.holds = 0
        self.connected = threading.Event()  # always connected, on one connection
        self.connected.set()
        self.epoch = 1

    def route(self, _filter: str, handler: Callable[[str, bytes], None]) -> None:
        self.handler = handler

    def unroute(self, _filter: str) -> None:
        self.handler = None

    def hold(self, topics: list[str], qos: int = 1) -> None:
        self.held.update(topics)
        self.holds += len(topics)
        for topic in topics:
            if topic in self.published and self.handler is not None:
                self.handler(topic, self.published[topic])

    def release(self, topics: list[str]) -> None:
        self.held.difference_update(topics)


def _blob(tmp_path: Path, size: int, chunk: int) -> tuple[BlobSpec, list[bytes]]:
    data = os.urandom(size)
    source = tmp_path / "model.onnx"
    source.write_bytes(data)
    return describe_blob(source, chunk), [data[i : i + chunk] for i in range(0, size, chunk)]


def _fetcher(link: FakeLink, window: int = 4) -> ChunkFetcher:
    return ChunkFetcher(link, Topics(), window, Boundary("test", lambda *_: None))  # type: ignore[arg-type]


def test_a_partial_download_takes_disk_only_for_what_arrived(tmp_path: Path) -> None:
    blob, chunks = _blob(tmp_path, 40 * 4096, 4096)
    topics = Topics()
    first = {topics.blob_chunk(blob.sha256, i): chunks[i] for i in range(5)}
    link = FakeLink(first)
    dest = tmp_path / "incoming.part"
    with pytest.raises(Exception, match="chunks missing"):
        _fetcher(link).fetch(blob, dest, 0.3, threading.Event())
    assert dest.stat().st_size == 5 * 4096  # never truncated to the declared 160 KiB
    assert not link.held  # every subscription dropped
    # Resumed from disk: only the missing chunks are asked for.
    link.published = {topics.blob_chunk(blob.sha256, i): c for i, c in enumerate(chunks)}
    link.holds = 0
    stats = _fetcher(link).fetch(blob, dest, 5, threading.Event())
    assert (stats.resumed, stats.fetched, link.holds) == (5, 35, 35)
    assert dest.read_bytes() == b"".join(chunks)


def test_the_window_keeps_one_chunk_per_open_topic_and_drops_oversize(tmp_path: Path) -> None:
    blob, chunks = _blob(tmp_path, 4 * 1024, 1024)
    stats = FetchStats()
    window = _Window(blob, 2, stats)
    window.open(["a", "b"])
    for _ in range(1000):
        window.offer("a", chunks[0])
        window.offer("c", chunks[1])  # not asked for: a late copy, counted, not kept
    window.offer("b", b"x" * 5_000_000)
    assert len(window.arrived) == 2 and stats.duplicates == 1000
    kept = dict(window.arrived.pending())
    assert kept["a"] == chunks[0]
    assert isinstance(kept["b"], Oversize) and kept["b"].size == 5_000_000


def test_an_oversize_chunk_is_asked_for_once_more_then_refused(tmp_path: Path) -> None:
    blob, chunks = _blob(tmp_path, 4 * 1024, 1024)
    topics = Topics()
    published = {topics.blob_chunk(blob.sha256, i): c for i, c in enumerate(chunks)}
    published[topics.blob_chunk(blob.sha256, 2)] = b"y" * 4096
    with pytest.raises(Exception, match="chunk 2 is larger than the chunk size"):
        _fetcher(FakeLink(published)).fetch(blob, tmp_path / "x.part", 5, threading.Event())


# --- the store -------------------------------------------------------------------------------


def test_quarantine_key_covers_the_whole_manifest(compiled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "state")
    bad = compiled.package.manifest.model_copy(update={"version": "2.0.0"})
    store.quarantine(bad, "postprocessing does not fit")
    assert store.quarantined(bad) == "postprocessing does not fit"
    labels = ClassificationSpec(labels=tuple("abcdefghij"))
    corrected = bad.model_copy(update={"postprocess": labels})
    assert store.quarantined(corrected) is None  # same name, version and model: a new package


def test_quarantine_is_capped_and_evicts_the_oldest(compiled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "state")
    manifests = [
        compiled.package.manifest.model_copy(update={"version": f"2.0.{i}"})
        for i in range(MAX_QUARANTINE + 20)
    ]
    for manifest in manifests:
        store.quarantine(manifest, "bad")
    entries = json.loads((tmp_path / "state" / "quarantine.json").read_text())
    assert len(entries) == MAX_QUARANTINE
    assert store.quarantined(manifests[0]) is None and store.quarantined(manifests[19]) is None
    assert store.quarantined(manifests[20]) == "bad" and store.quarantined(manifests[-1]) == "bad"


def test_prune_incoming_keeps_only_the_current_download(compiled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "state")
    manifest = compiled.package.manifest
    for name in ("a" * 64 + ".part", "b" * 64 + ".part", "stray.tmp"):
        (store.incoming / name).write_bytes(b"x")
    store.partial_path(manifest.model).write_bytes(b"x")
    assert sorted(store.prune_incoming(keep=[manifest.model])) == sorted(
        ["a" * 64 + ".part", "b" * 64 + ".part", "stray.tmp"]
    )
    assert [p.name for p in store.incoming.iterdir()] == [store.partial_path(manifest.model).name]
    store.prune_incoming()
    assert not list(store.incoming.iterdir())


def test_a_failed_slot_is_removed_but_never_current(compiled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from device_harness import install

    install(compiled.package, tmp_path / "state")
    store = ModelStore(tmp_path / "state")
    current = (tmp_path / "state" / "current").resolve()
    store.discard(current)
    assert current.exists()
    staged = store.models / "digits-cnn" / "9.9.9"
    staged.mkdir()
    store.discard(staged)
    assert not staged.exists() and current.exists()


def test_a_stage_that_fails_leaves_no_staging_folder(compiled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "state")
    manifest = compiled.package.manifest
    files = {blob.path: tmp_path / f"{blob.path}.missing" for blob in [manifest.model]}
    with pytest.raises((OSError, KeyError)):
        store.stage(manifest, compiled.package.envelope, files)
    assert not any(p.name.endswith(".staging") for p in store.slot_of(manifest).parent.iterdir())


# --- golden files ----------------------------------------------------------------------------


def test_golden_files_must_be_plain_arrays(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    np.savez(good, inputs=np.zeros((1, 3), np.float32), outputs=np.ones((1, 2), np.float32))
    assert load_golden(good)[1].shape == (1, 2)
    objects = tmp_path / "objects.npz"
    np.savez(objects, inputs=np.array([{"a": 1}], dtype=object), outputs=np.zeros(2))
    pickled = tmp_path / "pickled.npz"
    pickled.write_bytes(pickle.dumps({"inputs": [1, 2]}))
    npy = tmp_path / "plain.npz"
    with open(npy, "wb") as fh:
        np.save(fh, np.zeros(3))
    partial = tmp_path / "partial.npz"
    np.savez(partial, inputs=np.zeros(3))
    strings = tmp_path / "strings.npz"
    np.savez(strings, inputs=np.array(["a"]), outputs=np.zeros(2))
    for path, why in ((objects, "plain arrays"), (pickled, "not an npz"), (npy, "not an npz"),
                      (partial, "lacks outputs"), (strings, "not plain numbers")):  # fmt: skip
        with pytest.raises(GoldenError, match=why):
            load_golden(path)


# --- ONNX Runtime's telemetry ------------------------------------------------------------------


def test_onnx_runtime_writes_nothing_under_home(compiled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The agent's own import of ONNX Runtime (what the probe child and the daemon use) turns its
    telemetry off: with HOME empty and no ORT_DISABLE_TELEMETRY given, a session leaves HOME
    empty."""
    home = tmp_path / "home"
    home.mkdir()
    # ONNX Runtime switches its telemetry off by itself when CI is set: unset it, as on a device.
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "CI")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    code = (
        "from agent.inference.onnxrt import ort; import sys;"
        "ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])"
    )
    model = str(compiled.package.model_path)
    subprocess.run([sys.executable, "-c", code, model], env=env, check=True, timeout=60)
    assert not list(home.rglob("*"))
    # Control: plain onnxruntime does write there, so the check above means something.
    plain = code.replace("from agent.inference.onnxrt import ort", "import onnxruntime as ort")
    subprocess.run([sys.executable, "-c", plain, model], env=env, check=True, timeout=60)
    assert list(home.rglob("*")), "this onnxruntime build has no telemetry to switch off"
