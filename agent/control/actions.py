"""What each command does: its arguments (a strict model) and its work, over the parts the
daemon hands in (:class:`Controls`). A new command is an args model, a function and one entry
in ``ACTIONS``; the controller checks the signature, the replay memory and the arguments first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent import __version__
from agent.comms.link import MqttLink
from agent.config import AgentConfig, ResultsConfig
from agent.contract import Topics, describe_errors
from agent.control.shadow import ShadowError, ShadowRunner
from agent.control.snapshot import SnapshotFailed, upload
from agent.delivery.deployer import Deployer
from agent.errors import AgentError
from agent.inference.pipeline import InferenceWorker
from agent.upstream.results import ResultSink

SECRET_KEYS = ("password", "secret", "token")  # config keys whose values never leave the device


class CommandFailed(AgentError):
    """A command that was accepted and could not do its work."""


@dataclass
class Controls:
    """The parts commands act on; built by the daemon."""

    device: str
    boot_id: str
    config: Callable[[], AgentConfig]
    apply: Callable[[str, dict[str, Any]], None]  # (section, values): the running config changes
    deployer: Deployer
    results: ResultSink
    inference: InferenceWorker
    shadow: ShadowRunner
    link: MqttLink
    topics: Topics
    restart: Callable[[], None]
    started_at: float = 0.0


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NoArgs(_Args):
    pass


class RollbackArgs(_Args):
    reason: str = Field(default="", max_length=200)
    # A rollout's abort: the package rolled back is never installed again here, even while its
    # manifest is still retained for this device.
    quarantine: bool = False


class ResultsArgs(_Args):
    mode: Literal["every", "on_change", "interval", "threshold"] | None = None
    interval_s: float | None = Field(default=None, gt=0)
    min_score: float | None = Field(default=None, ge=0, le=1)
    thresholds: dict[str, float] | None = Field(default=None, max_length=256)


class RateArgs(_Args):
    max_fps: float | None = Field(gt=0, le=1000)  # required: null lifts the limit


class SnapshotArgs(_Args):
    quality: int = Field(default=85, ge=1, le=100)


class ShadowArgs(_Args):
    action: Literal["start", "stop", "promote", "status"]
    version: str | None = Field(default=None, max_length=64)


Result = dict[str, Any]


def ping(c: Controls, _id: str, _args: NoArgs) -> Result:
    return {"pong": time.time(), "agent_version": __version__, "boot_id": c.boot_id}


def status(c: Controls, _id: str, _args: NoArgs) -> Result:
    return {
        **c.deployer.status(),
        "agent_version": __version__,
        "boot_id": c.boot_id,
        "uptime_s": round(time.time() - c.started_at, 1),
        "results_published": c.results.seq,
        "max_fps": c.inference.gate.max_fps,
        "shadow": c.shadow.describe(),
    }


def redact(value: Any) -> Any:
    """``value`` with every secret-named key's value replaced (when it has one)."""
    if isinstance(value, dict):
        return {
            k: ("<redacted>" if v is not None and any(s in k for s in SECRET_KEYS) else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def config(c: Controls, _id: str, _args: NoArgs) -> Result:
    return {"config": redact(c.config().model_dump(mode="json"))}


def rollback(c: Controls, command_id: str, args: RollbackArgs) -> Result:
    # The previous slot's own signed envelope is re-verified before it serves again.
    reason = f"command {command_id}" + (f": {args.reason}" if args.reason else "")
    return {"event": c.deployer.rollback(reason=reason, quarantine=args.quarantine)}


def results(c: Controls, _id: str, args: ResultsArgs) -> Result:
    changes = args.model_dump(exclude_none=True)
    if not changes:
        return {"results": c.results.config.model_dump(mode="json")}
    try:
        new = ResultsConfig.model_validate({**c.results.config.model_dump(), **changes})
    except ValidationError as exc:
        raise CommandFailed(f"results: {describe_errors(exc)}") from exc
    c.results.reconfigure(new)
    c.apply("results", new.model_dump())
    return {"results": new.model_dump(mode="json")}


def rate(c: Controls, _id: str, args: RateArgs) -> Result:
    c.inference.gate.max_fps = args.max_fps
    c.apply("runtime", {"max_fps": args.max_fps})
    return {"max_fps": args.max_fps}


def snapshot(c: Controls, command_id: str, args: SnapshotArgs) -> Result:
    frame = c.inference.last_frame
    if frame is None:
        raise SnapshotFailed("no frame has been inferred yet (is a model serving?)")
    taken = upload(c.link, c.topics, c.device, command_id, frame.image, args.quality)
    return {"snapshot": taken.model_dump(mode="json"), "captured_at": frame.captured_at}


def restart(_c: Controls, _id: str, _args: NoArgs) -> Result:
    return {"restarting": True}  # the controller exits after the done reply is out


def shadow(c: Controls, _id: str, args: ShadowArgs) -> Result:
    runner = c.shadow
    if args.action == "start":
        if args.version is None:
            raise ShadowError("shadow start needs version=<an installed version>")
        return runner.start_candidate(c.deployer.installed(args.version))
    if args.action == "stop":
        return runner.stop_candidate()
    if args.action == "promote":
        return runner.promote()
    return {"shadow": runner.describe()}


@dataclass(frozen=True)
class Action:
    args: type[_Args]
    run: Callable[[Controls, str, Any], Result]
    then_exit: bool = False  # the agent exits (75, systemd restarts it) once done is sent


ACTIONS: dict[str, Action] = {
    "ping": Action(NoArgs, ping),
    "status": Action(NoArgs, status),
    "config": Action(NoArgs, config),
    "rollback": Action(RollbackArgs, rollback),
    "results": Action(ResultsArgs, results),
    "rate": Action(RateArgs, rate),
    "snapshot": Action(SnapshotArgs, snapshot),
    "restart": Action(NoArgs, restart, then_exit=True),
    "shadow": Action(ShadowArgs, shadow),
}
