"""The rollout store on SQLite and on a real PostgreSQL (tests/postgres_server.py): the same
behaviour on both, state that survives a reopen, and a lease that two store objects (two
connections, as two controllers would hold) can never both hold."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from compiler.errors import CompilerError, InputError
from compiler.rollout.plan import (
    AbortRule,
    Criteria,
    DeviceRecord,
    RolloutSpec,
    parse_waves,
)
from compiler.rollout.store import (
    DatabaseUnavailable,
    PostgresStore,
    RolloutStore,
    SqliteStore,
    UnknownRollout,
    is_postgres,
    open_store,
)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "rollouts.db")
    return str(request.getfixturevalue("pg"))


@pytest.fixture
def stores(db: str) -> Iterator[Callable[[], RolloutStore]]:
    """Opens stores on the test's database; all closed after the test."""
    opened: list[RolloutStore] = []

    def open_one() -> RolloutStore:
        opened.append(open_store(db))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


def spec(rollout_id: str = "digits-1.1.0-ab12", created_at: float = 1000.0) -> RolloutSpec:
    return RolloutSpec(
        id=rollout_id,
        package="/packages/digits-cnn-1.1.0",
        name="digits-cnn",
        version="1.1.0",
        target="group:cams",
        waves=parse_waves("1,10%,50%"),
        criteria=Criteria(agreement=0.9, min_frames=200),
        rules=(AbortRule(metric="p99_ms", op=">=", threshold=50, min_devices=3),),
        answer_s=120,
        created_at=created_at,
    )


def test_backend_follows_the_db_argument(db: str, stores: Callable[[], RolloutStore]) -> None:
    store = stores()
    assert isinstance(store, PostgresStore if is_postgres(db) else SqliteStore)


def test_create_get_and_list_newest_first(stores: Callable[[], RolloutStore]) -> None:
    store = stores()
    assert store.get("nope") is None
    assert store.list() == []
    store.create(spec("old", created_at=1000))
    store.create(spec("new", created_at=2000))
    rollout = store.get("old")
    assert rollout is not None
    assert rollout.spec == spec("old", created_at=1000)  # every field round-trips through JSON
    assert (rollout.state, rollout.wave, rollout.reason, rollout.evidence) == (
        "running", 0, "", {}
    )  # fmt: skip
    assert rollout.updated_at > 0
    assert [r.spec.id for r in store.list()] == ["new", "old"]


def test_a_duplicate_id_is_refused_and_the_first_kept(stores: Callable[[], RolloutStore]) -> None:
    store = stores()
    store.create(spec("r1"))
    with pytest.raises(InputError, match="exists already"):
        store.create(spec("r1").model_copy(update={"version": "9.9.9"}))
    rollout = store.get("r1")
    assert rollout is not None and rollout.spec.version == "1.1.0"


def test_state_wave_reason_and_evidence_round_trip(stores: Callable[[], RolloutStore]) -> None:
    store = stores()
    store.create(spec("r1"))
    store.set_wave("r1", 2)
    evidence = {
        "rule": "failed_pct > 0 (min 1 devices)",
        "figures": {"devices": 2, "failed_pct": 50.0, "p99_ms": None},
        "devices": [{"device": "cam-3", "state": "failed", "reason": "golden", "p99_ms": 81.5}],
    }
    store.set_state("r1", "aborted", "failed_pct 50 > 0 over 2 devices", evidence)
    rollout = store.get("r1")
    assert rollout is not None
    assert (rollout.state, rollout.wave) == ("aborted", 2)
    assert rollout.reason == "failed_pct 50 > 0 over 2 devices"
    assert rollout.evidence == evidence
    store.set_state("r1", "paused")  # reason and evidence are replaced, not kept
    rollout = store.get("r1")
    assert rollout is not None and (rollout.state, rollout.reason, rollout.evidence) == (
        "paused", "", {}
    )  # fmt: skip


def test_unknown_rollouts_and_states_are_input_errors(
    stores: Callable[[], RolloutStore],
) -> None:
    store = stores()
    with pytest.raises(UnknownRollout, match="rollout list"):
        store.set_state("ghost", "paused")
    with pytest.raises(UnknownRollout):
        store.set_wave("ghost", 1)
    with pytest.raises(UnknownRollout):
        store.put_device("ghost", DeviceRecord(device="cam-1", wave=0))
    store.create(spec("r1"))
    with pytest.raises(InputError, match="not a rollout state"):
        store.set_state("r1", "exploded")  # type: ignore[arg-type]


def test_devices_are_upserted_per_rollout(stores: Callable[[], RolloutStore]) -> None:
    store = stores()
    store.create(spec("r1"))
    store.create(spec("r2"))
    assert store.devices("r1") == {}
    store.put_device("r1", DeviceRecord(device="cam-1", wave=0, state="sent", since=5.0))
    store.put_device("r1", DeviceRecord(device="cam-2", wave=1))
    store.put_device("r2", DeviceRecord(device="cam-1", wave=0))
    passed = DeviceRecord(
        device="cam-1",
        wave=0,
        state="succeeded",
        figures={"frames": 300, "error_rate": 0.0, "p99_ms": 12.5, "agreement": None},
        reason="passed probation",
        since=9.0,
    )
    store.put_device("r1", passed)
    assert store.devices("r1") == {
        "cam-1": passed, "cam-2": DeviceRecord(device="cam-2", wave=1)
    }  # fmt: skip
    assert store.devices("r2") == {"cam-1": DeviceRecord(device="cam-1", wave=0)}


def test_the_lease_is_exclusive_renewable_and_releasable(
    stores: Callable[[], RolloutStore],
) -> None:
    first, second = stores(), stores()
    assert first.acquire("r1", "ctl-a", 60)
    assert not second.acquire("r1", "ctl-b", 60)
    assert first.acquire("r1", "ctl-a", 60)  # the owner renews
    assert second.acquire("r2", "ctl-b", 60)  # leases are per rollout
    assert not first.acquire("r2", "ctl-a", 60)
    second.release("r1", "ctl-b")  # not its lease: nothing changes
    assert not second.acquire("r1", "ctl-b", 60)
    first.release("r1", "ctl-a")
    assert second.acquire("r1", "ctl-b", 60)
    assert not first.acquire("r1", "ctl-a", 60)


def test_an_expired_lease_is_taken_over(stores: Callable[[], RolloutStore]) -> None:
    first, second = stores(), stores()
    assert first.acquire("r1", "ctl-a", 0.3)
    deadline = time.monotonic() + 30
    # waits on the condition (the lease expired by the database's clock), not a fixed time
    while not second.acquire("r1", "ctl-b", 60):
        assert time.monotonic() < deadline, "the expired lease was never taken over"
        time.sleep(0.05)
    assert not first.acquire("r1", "ctl-a", 60)  # the old owner cannot renew any more


def test_concurrent_acquires_never_give_one_lease_twice(
    stores: Callable[[], RolloutStore],
) -> None:
    contenders = [stores() for _ in range(4)]
    rollouts = [f"r{i}" for i in range(25)]
    won: dict[str, list[str]] = {r: [] for r in rollouts}
    start = threading.Barrier(len(contenders))
    lock = threading.Lock()

    def contend(index: int, store: RolloutStore) -> None:
        start.wait()
        for rollout in rollouts:
            if store.acquire(rollout, f"ctl-{index}", 60):
                with lock:
                    won[rollout].append(f"ctl-{index}")

    threads = [threading.Thread(target=contend, args=(i, s)) for i, s in enumerate(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(len(owners) == 1 for owners in won.values()), won


def test_a_second_open_sees_everything(stores: Callable[[], RolloutStore]) -> None:
    store = stores()
    store.create(spec("r1"))
    store.set_wave("r1", 1)
    store.set_state("r1", "paused", "by hand")
    store.put_device("r1", DeviceRecord(device="cam-1", wave=0, state="succeeded"))
    assert store.acquire("r1", "ctl-a", 60)
    store.close()
    again = stores()
    rollout = again.get("r1")
    assert rollout is not None
    assert (rollout.spec, rollout.state, rollout.wave, rollout.reason) == (
        spec("r1"), "paused", 1, "by hand"
    )  # fmt: skip
    assert again.devices("r1")["cam-1"].state == "succeeded"
    assert not again.acquire("r1", "ctl-b", 60)  # the lease outlives the connection
    assert again.acquire("r1", "ctl-a", 60)


def test_an_unopenable_sqlite_path_is_one_runtime_error(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailable, match="cannot open rollout database"):
        open_store(str(tmp_path / "missing" / "rollouts.db"))
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(DatabaseUnavailable, match="not a usable rollout database"):
        open_store(str(tmp_path / "junk.db"))


def test_an_unreachable_postgres_is_one_runtime_error() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DatabaseUnavailable, match=r"cannot connect to PostgreSQL at 127\.0\.0\.1"):
        open_store(f"postgresql://postgres@127.0.0.1:{port}/rollouts")


def test_a_malformed_dsn_or_empty_db_is_an_input_error() -> None:
    with pytest.raises(InputError, match="not a PostgreSQL connection string"):
        open_store("postgresql://[broken")
    with pytest.raises(InputError, match="empty"):
        open_store("  ")
    assert issubclass(DatabaseUnavailable, CompilerError)
    assert not issubclass(DatabaseUnavailable, InputError)


def test_a_guarded_state_change_does_not_overwrite_a_newer_state(
    stores: Callable[[], RolloutStore],
) -> None:
    """What `rollout abort` relies on: the controller's `done`, written after the CLI read
    `running`, is not turned into `aborted`."""
    cli, controller = stores(), stores()
    cli.create(spec("r1"))
    controller.set_state("r1", "done")
    with pytest.raises(InputError, match="r1 is done: only a running or paused rollout"):
        cli.set_state("r1", "aborted", "by hand", only_from=("running", "paused"))
    rollout = cli.get("r1")
    assert rollout is not None and rollout.state == "done"
    controller.set_state("r1", "paused")
    cli.set_state("r1", "aborted", "by hand", only_from=("running", "paused"))
    rollout = cli.get("r1")
    assert rollout is not None and (rollout.state, rollout.reason) == ("aborted", "by hand")
    with pytest.raises(UnknownRollout):
        cli.set_state("ghost", "aborted", only_from=("running",))
