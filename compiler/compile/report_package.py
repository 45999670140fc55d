"""A package's report page, ``NAME-VERSION.html`` beside its folder: the signed report (the
manifest's ``metrics``), what the package is (created, model sha256, key id, preprocessing),
and, once devices installed it, their own figures (``devices``, written by
compiler.fleet.feedback into the folder's unsigned ``devices.json``).

Written by ``edgewise compile`` and again by ``edgewise serve --packages DIR`` whenever a device
reports figures for it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.contract import Package, read_package

from .report_render import write_html

DEVICES_FILE = "devices.json"  # compiler.fleet.feedback writes it; the same name there


def key_ids(envelope: bytes) -> list[str]:
    """The key ids the envelope's signatures name (none when it cannot be read)."""
    try:
        signatures = json.loads(envelope).get("signatures")
    except (ValueError, AttributeError):
        return []
    if not isinstance(signatures, list):
        return []
    return [str(s["keyid"]) for s in signatures if isinstance(s, dict) and "keyid" in s]


def package_info(package: Package) -> dict[str, Any]:
    manifest = package.manifest
    return {
        "name": manifest.name,
        "version": manifest.version,
        "created_at": manifest.created_at,
        "sha256": manifest.model.sha256,
        "model_bytes": manifest.model.size,
        "key_ids": key_ids(package.envelope),
        "preprocess": manifest.preprocess.model_dump(mode="json"),
    }


def read_devices(root: Path) -> dict[str, Any]:
    """The devices' figures kept beside the package; {} when none (or unreadable)."""
    try:
        found = json.loads((root / DEVICES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def html_path(root: Path) -> Path:
    return root.with_name(root.name + ".html")


def page(package: Package, devices: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report as the page shows it: the signed metrics plus the package and devices."""
    metrics = package.manifest.metrics if isinstance(package.manifest.metrics, Mapping) else {}
    extra = {"devices": dict(devices)} if devices else {}
    return {**metrics, "package": package_info(package), **extra}


def write_package_html(package: Package) -> Path:
    """(Re)write the package's report page with the devices' figures found beside it."""
    return write_html(page(package, read_devices(package.root)), html_path(package.root))


def rewrite_page(root: Path) -> Path | None:
    """For serve's feedback job: rewrite the page of the package at ``root`` when it has one
    (a package compiled with --no-html keeps none)."""
    if not html_path(root).exists():
        return None
    return write_package_html(read_package(root))
