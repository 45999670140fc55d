"""Builds the control plane from the daemon's parts: the command thread, the shadow runner and
Home Assistant discovery, started and stopped with the agent."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from agent.config import AgentConfig
from agent.contract import TrustStore
from agent.control.actions import Controls
from agent.control.controller import Controller
from agent.control.homeassistant import HomeAssistant
from agent.control.memory import SeenCommands
from agent.control.shadow import ShadowRunner
from agent.delivery.deployer import Deployer
from agent.inference.pipeline import InferenceWorker
from agent.upstream.status import StatusBoard

Report = Callable[[dict[str, Any]], None]


def shadow_runner(
    config: Callable[[], AgentConfig],
    report: Report,
    promote: Callable[[str], Any],
    stop: threading.Event,
) -> ShadowRunner:
    return ShadowRunner(
        config=lambda: config().shadow,
        runtime=lambda: config().runtime,
        report=report,
        promote=promote,
        keep_dir=config().device.state_dir / "shadow",
        stop=stop,
    )


def command_trust(config: AgentConfig) -> TrustStore | None:
    keys = config.commands.public_keys
    return TrustStore.from_files(keys) if keys else None


class ControlPlane:
    def __init__(
        self,
        *,
        controls: Controls,
        status: StatusBoard,
        stop: threading.Event,
    ):
        config = controls.config()
        device = config.device
        scopes = [f"device:{device.id}", *(f"group:{g}" for g in device.groups), "all"]
        self.seen = SeenCommands(device.state_dir / "commands.db")
        self.controller = Controller(
            controls=controls,
            trust=command_trust(config),
            scopes=scopes,
            seen=self.seen,
            report=status.event,
            stop=stop,
        )
        deployer = controls.deployer
        self.homeassistant = HomeAssistant(
            config=config.homeassistant,
            device=device.id,
            topics=controls.topics,
            link=controls.link,
            status_topic=status.topic,
            run=lambda cmd, args: self.controller.submit_local(cmd, args, "ha"),
            results=lambda: controls.results.config,
            model=status.model,
            offered=lambda: _offered(deployer),
        )
        self.shadow = controls.shadow
        inference: InferenceWorker = controls.inference
        inference.observers.append(self.shadow.offer)
        if config.homeassistant.enabled:  # the frame path carries no call it would only skip
            inference.observers.append(self.homeassistant.observe)

    def subscribe(self) -> None:
        """Before the link starts: subscriptions are then made on the first connect."""
        self.controller.subscribe()
        self.homeassistant.start()

    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        return (self.controller, self.shadow)

    def close(self) -> None:
        self.seen.close()


def _offered(deployer: Deployer) -> dict[str, str] | None:
    """The model the latest deployment brought (under way, staged or serving)."""
    progress = deployer.status().get("deployment") or {}
    return progress.get("model") or deployer.status().get("serving")
