"""Pause, resume and abort: what each change needs the rollout to be in, the state it leaves it
in, and applying one to the store. ``edgewise rollout pause|resume|abort`` and the console's
buttons share these rules, so both refuse the same changes with the same words."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import InputError
from .plan import RolloutState
from .store import RolloutStore, UnknownRollout

Change = Literal["pause", "resume", "abort"]

# What each change needs the rollout to be in, and the state it leaves it in.
CHANGES: dict[str, tuple[tuple[RolloutState, ...], RolloutState]] = {
    "pause": (("running",), "paused"),
    "resume": (("paused",), "running"),
    "abort": (("running", "paused"), "aborted"),
}
DEFAULT_REASONS = {"pause": "paused by hand", "abort": "aborted by hand"}


@dataclass(frozen=True)
class Changed:
    """What a change did: ``before`` -> ``after``, or nothing when it was ``after`` already."""

    rollout: str
    before: RolloutState
    after: RolloutState

    @property
    def already(self) -> bool:
        return self.before == self.after

    def line(self) -> str:
        if self.already:
            return f"rollout {self.rollout} is {self.after} already"
        return f"rollout {self.rollout}: {self.before} -> {self.after}; the controller acts on it"


def apply_change(
    store: RolloutStore, rollout_id: str, change: str, reason: str = "", by: str = ""
) -> Changed:
    """Set the state ``change`` leads to; UnknownRollout, or InputError naming the state that
    does not allow it. ``reason``: the pause's or abort's (a default when empty; a resume
    clears it: nothing is wrong any more). ``by``: who aborted, kept in the evidence."""
    if change not in CHANGES:
        raise InputError(f"{change!r} is not a change (one of {', '.join(CHANGES)})")
    allowed, target = CHANGES[change]
    rollout = store.get(rollout_id)
    if rollout is None:
        raise UnknownRollout(rollout_id)
    if rollout.state == target:
        return Changed(rollout_id, target, target)
    if rollout.state not in allowed:
        raise InputError(
            f"rollout {rollout_id} is {rollout.state}: only a {' or '.join(allowed)} "
            f"rollout can {change}"
        )
    why = "" if change == "resume" else (reason or DEFAULT_REASONS[change])
    # only_from: the controller may have finished or aborted it since it was read
    if change == "abort":
        evidence = {"by": by or "edgewise rollout abort", "wave": rollout.wave + 1}
        store.set_state(rollout_id, target, why, evidence, only_from=allowed)
    else:
        store.set_state(rollout_id, target, why, only_from=allowed)
    return Changed(rollout_id, rollout.state, target)
