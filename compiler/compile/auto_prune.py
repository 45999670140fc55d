"""``--prune auto`` run on one compile: each trial a stage of its own (see ``prune_search``)."""

from __future__ import annotations

from ..errors import AccuracyBudgetError
from .prune_search import Search, Trial, bisect, judge
from .stages import Compilation, _Float, _Int8, _Pruned


def auto_prune(run: Compilation, fp32: _Float) -> tuple[_Pruned | None, _Int8, Search]:
    """``--prune auto``: each trial ratio pruned, recovered and quantized in its own folder;
    the largest that keeps the budget (and the latency cap) is the one kept."""
    kept: dict[float, tuple[_Pruned, _Int8]] = {}

    def trial(ratio: float) -> Trial:
        work = run.work / f"trial-{ratio:.4f}"
        work.mkdir()
        try:
            pruned = run.pruned(fp32, ratio, work)
            int8 = run.int8(pruned.model, fp32, work)
        except AccuracyBudgetError as exc:
            return Trial(ratio, None, None, None, None, False, str(exc).split(";")[0])
        kept[ratio] = (pruned, int8)
        m, opts = int8.metrics, run.options
        drop = round((fp32.evaluation.accuracy - int8.evaluation.accuracy) * 100, 3)
        return judge(ratio, m.accuracy, drop, m.ort_p50_ms_1t, m.macs, opts)

    search = bisect(trial)
    if search.chosen is None:
        return None, run.int8(fp32, fp32), search
    pruned, int8 = kept[search.chosen]
    return pruned, int8, search
