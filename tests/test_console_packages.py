"""The packages page's API: the compile report of each package in ``--packages DIR`` and the
difference of two, on packages the session's fixtures compiled (1.0.0 pruned, 1.1.0 not)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.contract import Package, Topics
from compiler.console.app import ConsoleContext, make_app
from compiler.console.auth import User, Users, new_token
from compiler.console.board import Board
from compiler.console.packages import diff, list_packages

TOKEN, SECRET = new_token()
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def folder(compiled: Any, v2: Package, tmp_path: Path) -> Path:
    root = tmp_path / "packages"
    shutil.copytree(compiled.package.root, root / "digits-cnn-1.0.0")
    shutil.copytree(v2.root, root / "digits-cnn-1.1.0")
    (root / "junk").mkdir()
    (root / "junk" / "manifest.json").write_text("not a manifest")  # skipped, not fatal
    (root / "notes.txt").write_text("the folder may hold other things")
    return root


def test_each_package_with_its_report(folder: Path, compiled: Any) -> None:
    found = list_packages(folder)
    assert [p["id"] for p in found] == ["digits-cnn-1.0.0", "digits-cnn-1.1.0"]
    one = found[0]
    int8 = compiled.report["stages"]["int8"]
    assert one["accuracy"] == pytest.approx(int8["accuracy"])
    assert one["size_bytes"] == int8["file_bytes"]
    assert one["p50_ms"] == pytest.approx(int8["ort_p50_ms_1t"])
    assert one["p99_ms"] == pytest.approx(int8["ort_p99_ms_1t"])
    assert list(one["stages"]) == ["fp32", "pruned", "int8"]
    assert list(found[1]["stages"]) == ["fp32", "int8"]  # 1.1.0 is not pruned
    assert one["created_at"] and one["model_bytes"] > 0


def test_the_diff_of_two_packages(folder: Path) -> None:
    result = diff(folder, "digits-cnn-1.0.0", "digits-cnn-1.1.0")
    assert (result["a"]["version"], result["b"]["version"]) == ("1.0.0", "1.1.0")
    for key in ("accuracy", "size_bytes", "p50_ms", "p99_ms"):
        figure = result["figures"][key]
        assert figure["delta"] == pytest.approx(figure["b"] - figure["a"])
    # the unpruned int8 model is larger: the diff says by how much
    assert result["figures"]["size_bytes"]["delta"] > 0
    pruned = result["stages"]["pruned"]["accuracy"]
    assert pruned["a"] is not None and pruned["b"] is None and pruned["delta"] is None
    assert result["per_class"] is None  # the compile report carries no per-class accuracy


def test_packages_over_http(folder: Path) -> None:
    ctx = ConsoleContext(
        board=Board(Topics()), users=Users([User("grafana", "viewer", SECRET)]), commands=None,
        rollouts_db=None, packages=folder, results_db=None,
    )  # fmt: skip

    async def body() -> None:
        async with TestClient(TestServer(make_app(ctx))) as client:
            listed = await (await client.get("/api/packages", headers=BEARER)).json()
            assert [p["id"] for p in listed["packages"]] == [
                "digits-cnn-1.0.0",
                "digits-cnn-1.1.0",
            ]
            url = "/api/packages/diff?a=digits-cnn-1.0.0&b=digits-cnn-1.1.0"
            response = await client.get(url, headers=BEARER)
            assert response.status == 200
            assert "accuracy" in (await response.json())["figures"]
            missing = await client.get("/api/packages/diff?a=digits-cnn-1.0.0", headers=BEARER)
            assert missing.status == 400 and "a=ID&b=ID" in (await missing.json())["error"]
            unknown = await client.get(
                "/api/packages/diff?a=digits-cnn-1.0.0&b=<b>9</b>", headers=BEARER
            )
            assert unknown.status == 404
            assert (await unknown.json())["error"].startswith("no package '<b>9</b>'")

    asyncio.run(body())
