"""SIGHUP: which keys of a re-read config apply at once, and the running config with them."""

from __future__ import annotations

from dataclasses import dataclass

from agent.config import AgentConfig, changed_keys, reloadable


@dataclass(frozen=True)
class Reload:
    config: AgentConfig  # the running config with every reloadable change applied
    applied: list[str]  # dotted keys that changed and apply now
    needs_restart: list[str]  # dotted keys that changed and apply only after a restart


def merge(running: AgentConfig, new: AgentConfig) -> Reload:
    changed = changed_keys(running, new)
    applied = [key for key in changed if reloadable(key)]
    later = [key for key in changed if not reloadable(key)]
    sections: dict[str, dict[str, object]] = {}
    for key in applied:
        section, name = key.split(".", 1)
        sections.setdefault(section, {})[name] = getattr(getattr(new, section), name)
    config = running.model_copy(
        update={
            section: getattr(running, section).model_copy(update=fields)
            for section, fields in sections.items()
        }
    )
    return Reload(config, applied, later)
