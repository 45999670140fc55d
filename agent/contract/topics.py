"""The MQTT topic tree. Every topic in the project is built here and nowhere else.

{root}/v1/deploy/device/{device_id}   retained signed manifest for one device
{root}/v1/deploy/group/{group}        retained signed manifest for a group
{root}/v1/deploy/all                  retained signed manifest for the whole fleet
{root}/v1/blobs/{sha256}/{index}      retained model chunk (content-addressed; delivery "retained")
{root}/v1/devices/{device_id}/wants   the chunks a device lacks (delivery "request"; ChunkRequest)
{root}/v1/devices/{device_id}/inbox/{sha256}/{index}  a chunk answered to one device, not retained
{root}/v1/fleet/state                 retained fleet summary kept by `edgewise serve`
{root}/v1/markers/{token}             a cloud tool's own end-of-retained marker (never retained)
{root}/v1/commands/device/{device_id} commands for one device (likewise group/{group}, all)
{root}/v1/devices/{device_id}/status  retained online/offline (birth and last will)
{root}/v1/devices/{device_id}/results inference results
{root}/v1/devices/{device_id}/events  deploy outcomes and errors
{root}/v1/devices/{device_id}/telemetry retained health figures, every telemetry interval
{root}/v1/devices/{device_id}/replies  replies to signed commands (agent.contract.commands)
{root}/v1/devices/{device_id}/snapshots/{command_id}/{index}  a snapshot's JPEG chunks
{root}/v1/devices/{device_id}/snapshot the latest snapshot, one retained JPEG (for Home Assistant)
{root}/v1/devices/{device_id}/ha/{leaf} Home Assistant's state topics; it writes ha/set/{button}
"""

from __future__ import annotations

from dataclasses import dataclass

_FORBIDDEN = set("+#/\x00.")
# A device id or group is an MQTT topic level, a client-id suffix and a certificate CN. No '.':
# RabbitMQ's MQTT plugin rewrites '.' in topics and NATS refuses it (a will topic at CONNECT).
# Versions (1.0.0) and package names never become topic levels: they travel in payloads.
ID_CHARS = "A-Za-z0-9_-"
DEVICE_ID_PATTERN = rf"^[A-Za-z0-9][{ID_CHARS}]{{0,63}}$"


def dot_problem(value: str, kind: str) -> str | None:
    """Why ``value`` (a ``kind``: device, group, topic root) cannot be a topic level on every
    broker, or None; the one-line migration message for a config or argument written before."""
    if "." not in value:
        return None
    return (
        f"{value!r} contains '.', which RabbitMQ and NATS cannot carry in a topic; "
        f"rename the {kind} (e.g. {value.replace('.', '-')!r})"
    )


def _segment(value: str, what: str) -> str:
    if not value or _FORBIDDEN & set(value):
        raise ValueError(
            f"{what} {value!r} cannot be an MQTT topic level on every broker "
            "(empty, '/', '+', '#', '.')"
        )
    return value


@dataclass(frozen=True)
class Topics:
    """Builds topics under one root (``edgewise`` unless a deployment shares its broker)."""

    root: str = "edgewise"

    @property
    def _base(self) -> str:
        return f"{_segment(self.root, 'topic root')}/v1"

    def deploy_device(self, device_id: str) -> str:
        return f"{self._base}/deploy/device/{_segment(device_id, 'device id')}"

    def deploy_group(self, group: str) -> str:
        return f"{self._base}/deploy/group/{_segment(group, 'group')}"

    def deploy_all(self) -> str:
        return f"{self._base}/deploy/all"

    def deploy(self, target: str) -> str:
        """The deploy topic of ``device:ID``, ``group:NAME`` or ``all``."""
        kind, _, name = target.partition(":")
        if kind == "device" and name:
            return self.deploy_device(name)
        if kind == "group" and name:
            return self.deploy_group(name)
        if target == "all":
            return self.deploy_all()
        raise ValueError(f"not a deploy target: {target!r} (device:ID, group:NAME or all)")

    def all_deploys(self) -> str:
        """Filter matching every deploy topic (device, group and fleet-wide)."""
        return f"{self._base}/deploy/#"

    def marker(self, token: str) -> str:
        """A topic only one cloud client subscribes to: what it publishes there comes back after
        the retained messages of the subscriptions it made before (delivery is in order)."""
        return f"{self._base}/markers/{_segment(token, 'marker')}"

    def commands_device(self, device_id: str) -> str:
        return f"{self._base}/commands/device/{_segment(device_id, 'device id')}"

    def commands_group(self, group: str) -> str:
        return f"{self._base}/commands/group/{_segment(group, 'group')}"

    def commands_all(self) -> str:
        return f"{self._base}/commands/all"

    def commands(self, target: str) -> str:
        """The command topic of ``device:ID``, ``group:NAME`` or ``all``."""
        kind, _, name = target.partition(":")
        if kind == "device" and name:
            return self.commands_device(name)
        if kind == "group" and name:
            return self.commands_group(name)
        if target == "all":
            return self.commands_all()
        raise ValueError(f"not a command target: {target!r} (device:ID, group:NAME or all)")

    def all_blobs(self) -> str:
        """Filter matching every chunk of every blob."""
        return f"{self._base}/blobs/#"

    def blob_chunk(self, sha256: str, index: int) -> str:
        return f"{self._base}/blobs/{_segment(sha256, 'sha256')}/{index}"

    def blob_chunks(self, sha256: str) -> str:
        """Filter matching every chunk of one blob."""
        return f"{self._base}/blobs/{_segment(sha256, 'sha256')}/+"

    def device(self, device_id: str, leaf: str) -> str:
        return f"{self._base}/devices/{_segment(device_id, 'device id')}/{leaf}"

    def status(self, device_id: str) -> str:
        return self.device(device_id, "status")

    def results(self, device_id: str) -> str:
        return self.device(device_id, "results")

    def events(self, device_id: str) -> str:
        return self.device(device_id, "events")

    def telemetry(self, device_id: str) -> str:
        return self.device(device_id, "telemetry")

    def replies(self, device_id: str) -> str:
        """Where a device answers signed commands (accepted/rejected, then done/failed)."""
        return self.device(device_id, "replies")

    def snapshot_chunk(self, device_id: str, command_id: str, index: int) -> str:
        """Chunk ``index`` of the JPEG a ``snapshot`` command took (QoS 1, not retained)."""
        return f"{self.device(device_id, 'snapshots')}/{_segment(command_id, 'command id')}/{index}"

    def snapshot_chunks(self, command_id: str) -> str:
        """Filter matching every chunk of one snapshot command's JPEGs, from every device."""
        return f"{self._base}/devices/+/snapshots/{_segment(command_id, 'command id')}/+"

    def snapshot(self, device_id: str) -> str:
        """The latest snapshot as one retained JPEG (what Home Assistant's image entity shows)."""
        return self.device(device_id, "snapshot")

    def ha(self, device_id: str, leaf: str) -> str:
        """A Home Assistant topic of one device: ``state``, ``label/{label}``, ``set/{button}``."""
        return self.device(device_id, f"ha/{leaf}")

    def all_devices(self, leaf: str) -> str:
        """Filter matching one leaf of every device, e.g. all results."""
        return f"{self._base}/devices/+/{leaf}"

    def wants(self, device_id: str) -> str:
        """Where a device asks for the chunks it lacks (delivery "request")."""
        return self.device(device_id, "wants")

    def inbox_chunk(self, device_id: str, sha256: str, index: int) -> str:
        """Chunk ``index`` of a blob, answered to one device (QoS 1, not retained)."""
        return f"{self.device(device_id, 'inbox')}/{_segment(sha256, 'sha256')}/{index}"

    def inbox_chunks(self, device_id: str, sha256: str) -> str:
        """Filter matching every answered chunk of one blob for one device."""
        return f"{self.device(device_id, 'inbox')}/{_segment(sha256, 'sha256')}/+"

    def fleet_state(self) -> str:
        """The fleet summary `edgewise serve` keeps (one exact topic: retained messages reach
        it on brokers that do not deliver them to wildcard subscriptions)."""
        return f"{self._base}/fleet/state"

    def device_of(self, topic: str) -> str:
        """The device id in a ``devices/{id}/...`` topic."""
        parts = topic.split("/")
        if len(parts) < 5 or parts[2] != "devices":
            raise ValueError(f"not a device topic: {topic!r}")
        return parts[3]
