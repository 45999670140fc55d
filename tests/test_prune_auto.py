"""``--prune auto``: bisection over the channel ratio finds the most pruning whose int8 model
keeps the accuracy budget (and the latency cap); every trial is in the report."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from conftest import _compile

from compiler.cli import main
from compiler.compile.prune_search import MAX_RATIO, Trial, bisect
from compiler.compile.report_render import format_table


def fake(limit: float) -> Any:
    def trial(ratio: float) -> Trial:
        ok = ratio <= limit
        return Trial(ratio, 0.9, 0.5, 0.1, 1000, ok, "" if ok else "too far")

    return trial


def test_bisection_keeps_the_largest_ratio_that_passed() -> None:
    search = bisect(fake(0.6))
    assert [t.ratio for t in search.trials] == [0.4375, 0.6562, 0.5469]
    assert search.chosen == 0.5469
    assert bisect(fake(1.0)).chosen == bisect(fake(MAX_RATIO)).chosen > 0.75


def test_when_no_ratio_passes_nothing_is_chosen() -> None:
    search = bisect(fake(0.0))
    assert search.chosen is None and not any(t.passed for t in search.trials)


def test_auto_pruning_compiles_the_largest_ratio_within_the_budget(  # type: ignore[no-untyped-def]
    trained_model, digits, signing_keys, tmp_path: Path
) -> None:
    result = _compile(
        copy.deepcopy(trained_model), digits, version="1.0.0", signing_key=signing_keys[0],
        out_dir=tmp_path, prune_auto=True, recovery_epochs=1, max_accuracy_drop=1.0,
    )  # fmt: skip
    search = result.report.prune_search
    assert search is not None and len(search.trials) == 3
    passed = [t.ratio for t in search.trials if t.passed]
    assert search.chosen == (max(passed) if passed else None)
    stages = result.report.stages
    if search.chosen is not None:
        assert "pruned" in stages and stages["pruned"].macs < stages["fp32"].macs  # type: ignore[operator]
    drop = (stages["fp32"].accuracy - stages["int8"].accuracy) * 100
    assert drop <= 1.0
    assert "prune search (--prune auto)" in format_table(result.report)
    assert result.report["prune_search"]["chosen"] == search.chosen  # in the manifest too


def test_a_latency_cap_without_auto_pruning_is_one_line(  # type: ignore[no-untyped-def]
    signing_keys, tmp_path: Path, capsys
) -> None:
    args = [
        "compile", "model.pt", "--name", "d", "--version", "1.0.0",
        "--key", str(signing_keys[0]), "--out", str(tmp_path / "out"), "--max-latency-ms", "1",
    ]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == "edgewise: compile failed: --max-latency-ms applies to --prune auto only"


@pytest.mark.parametrize("flags", [["--prune", "auto", "--prune-ratio", "0.5"], ["--prune", "x"]])
def test_auto_pruning_is_one_of_the_pruning_choices(flags: list[str], capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exit_:
        main(["compile", "m.pt", "--name", "d", "--version", "1.0.0", "--key", "k", *flags])
    assert exit_.value.code == 2
