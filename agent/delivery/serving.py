"""What serves, and every switch between installed packages: at boot, after a deployment, on an
operator's ``activate`` or ``rollback``, and when probation rolls a model back.

One path turns a package into a serving session — re-verified on disk (signature, every file's
sha256), loaded, warmed up and golden-checked (agent.inference.runtime.load_package) — and one
makes the switch: swap between two frames, make the slot current, report it. A switch that
cannot be made leaves what serves serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import RuntimeConfig
from agent.contract import ContractError, Manifest, Package, TrustStore
from agent.delivery.outcomes import Report, Status, deployment_event, model_of
from agent.delivery.store import ModelStore
from agent.errors import ActivationError, ModelLoadError, NotInstalled
from agent.inference.pipeline import ModelSlot
from agent.inference.runtime import ModelSession, load_package

log = logging.getLogger(__name__)


def same_package(a: Manifest, b: Manifest) -> bool:
    return (a.name, a.version, a.model.sha256) == (b.name, b.version, b.model.sha256)


class Serving:
    def __init__(
        self,
        *,
        store: ModelStore,
        trust: TrustStore,
        models: ModelSlot,
        runtime: Callable[[], RuntimeConfig],
        status: Status,
        report: Report,
        announce: Callable[[], None],
    ):
        self._store, self._trust, self._models, self._runtime = store, trust, models, runtime
        self._status, self._report, self._announce = status, report, announce
        # The session the last switch displaced, held only while probation may want it back.
        self.displaced: ModelSession | None = None

    def open(self, package: Package) -> ModelSession:
        """The package's model loaded, warmed up and golden-checked; ModelLoadError if not."""
        return load_package(package, self._runtime())

    def boot(self) -> None:
        """Serve the installed package (``current``, else ``previous``) before anything arrives;
        with none, or none that verifies, loads and passes its golden check, wait for a
        deployment. Nothing is reported: no deployment happened."""
        errors = []
        for link, found in self._store.bootable(self._trust):
            try:
                if isinstance(found, Exception):
                    raise found
                session = self.open(found)
            except (OSError, ValueError, ContractError, ModelLoadError) as exc:
                errors.append(f"{link}: {exc}")
                continue
            if errors:
                log.error("installed model failed, serving %s instead: %s", link, "; ".join(errors))
            self._models.swap(session)
            log.info("serving installed %s %s", found.manifest.name, found.manifest.version)
            return
        if errors:
            log.error("installed model failed, waiting for a new one: %s", "; ".join(errors))
        else:
            log.info("no model installed yet; waiting for a deployment")

    def switch(
        self, package: Package, session: ModelSession, *, keep_displaced: bool = False
    ) -> dict[str, Any]:
        """Serve ``session`` from the next frame on and make its slot current; the ``active``
        event. ``keep_displaced``: hold the old session for a rollback (probation)."""
        old = self._models.swap(session)  # between two frames: the next frame uses the new one
        self.displaced = old if keep_displaced else None
        self._store.activate(package.root)
        manifest = package.manifest
        log.info("serving %s %s", manifest.name, manifest.version)
        event = self._status("active", manifest)
        self._announce()
        return event

    def activate(self, version: str) -> dict[str, Any]:
        """Serve the installed ``version`` of the serving model's name (of the installed one's
        when none serves) and make it current; ActivationError (reported) when it cannot."""
        name = self._name()
        try:
            package = self._usable(self._find(name, version))
            serving = self._models.current
            if serving is not None and same_package(serving.manifest, package.manifest):
                session = serving  # already serving (e.g. booted from previous): make it current
            else:
                session = self._checked(package)
        except ActivationError as exc:
            self._refused(exc, {"name": name, "version": version} if name else None)
            raise
        return self.switch(package, session)

    def roll_back(self, reason: str, *, quarantine: bool = False) -> dict[str, Any]:
        """Serve ``previous`` again and make it current; the ``rolled_back`` event. Probation
        gets back the very session it displaced; otherwise ``previous`` is re-verified, loaded
        and golden-checked first. ``quarantine``: the package rolled back is never retried."""
        culprit = self._models.current
        restore = self.displaced
        if restore is None:
            try:
                previous = self._store.linked("previous")
                if previous is None:
                    raise ActivationError("no previous version to roll back to")
                restore = self._checked(self._usable(previous))
            except ActivationError as exc:
                self._refused(exc, model_of(culprit.manifest if culprit else None))
                raise
        self._models.swap(restore)
        self.displaced = None
        self._store.revert()
        manifest = culprit.manifest if culprit else None
        if quarantine and manifest is not None:
            self._store.quarantine(manifest, f"rolled back: {reason}")
        what = f"{manifest.name} {manifest.version}" if manifest else "nothing"
        log.log(logging.ERROR if quarantine else logging.INFO, "rolled back %s: %s", what, reason)
        event = self._status(
            "rolled_back", manifest, reason=reason, restored=restore.manifest.version
        )
        self._announce()
        return event

    def package(self, version: str) -> Package:
        """The installed ``version`` of the serving model's name, re-verified."""
        return self._usable(self._find(self._name(), version))

    def describe(self) -> dict[str, Any]:
        """What serves, what ``current`` and ``previous`` hold, every installed slot, and the
        quarantined packages (names from the folders: nothing is hashed)."""
        serving = self._models.current
        return {
            "serving": model_of(serving.manifest if serving else None),
            "current": _slot_model(self._store.linked("current")),
            "previous": _slot_model(self._store.linked("previous")),
            "installed": [_slot_model(slot) for slot in self._store.slots()],
            "quarantined": self._store.quarantine_list(),
        }

    def _name(self) -> str | None:
        serving = self._models.current
        if serving is not None:
            return serving.manifest.name
        slot = self._store.linked("current") or self._store.linked("previous")
        return slot.parent.name if slot else None

    def _find(self, name: str | None, version: str) -> Path:
        if name is None:
            raise NotInstalled(f"no model is installed, so not {version} either")
        slots = self._store.slots()
        for slot in slots:
            if slot.parent.name == name and slot.name == version:
                return slot
        installed = ", ".join(f"{s.parent.name} {s.name}" for s in slots) or "none"
        raise NotInstalled(f"{name} {version} is not installed (installed: {installed})")

    def _usable(self, slot: Path) -> Package:
        """The slot's package re-verified, holding what its folder says, not quarantined."""
        what = f"{slot.parent.name} {slot.name}"
        try:
            package = self._store.load(slot, self._trust)
        except (OSError, ValueError, ContractError) as exc:
            raise ActivationError(f"{what} fails verification: {exc}") from exc
        manifest = package.manifest
        if (manifest.name, manifest.version) != (slot.parent.name, slot.name):
            raise ActivationError(f"{what}: the slot holds {manifest.name} {manifest.version}")
        why = self._store.quarantined(manifest)
        if why is not None:
            raise ActivationError(f"{what} is quarantined ({why})")
        return package

    def _checked(self, package: Package) -> ModelSession:
        try:
            return self.open(package)
        except ModelLoadError as exc:
            what = f"{package.manifest.name} {package.manifest.version}"
            raise ActivationError(f"{what} cannot serve: {exc}") from exc

    def _refused(self, exc: ActivationError, model: dict[str, str] | None) -> None:
        """Report a switch that cannot be made (the caller raises ``exc``)."""
        log.error("%s", exc)
        self._report(deployment_event("rejected", model, reason=str(exc)))


def _slot_model(slot: Path | None) -> dict[str, str] | None:
    return {"name": slot.parent.name, "version": slot.name} if slot else None
