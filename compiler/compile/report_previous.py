"""The previous version of a package, for the compile report's comparison.

Which one: ``--previous PKG_DIR`` when given; otherwise the highest version of the same name in
the output folder (``--out``) that is lower than the version being compiled. Its figures (each
stage's accuracy with its sample count, size, latency and per-class accuracy) travel in the new
report's ``previous`` section, signed with it, so the comparison stays true after the old
package is deleted.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.contract import ContractError, parse_semver, read_package

from ..errors import InputError

# what a comparison needs of each stage
_KEPT = (
    "accuracy",
    "samples",
    "file_bytes",
    "ort_p50_ms_1t",
    "ort_p99_ms_1t",
    "ort_p50_ms_all",
    "per_class_accuracy",
)


def _semver(version: str) -> tuple[int, int, int] | None:
    try:
        return parse_semver(version)
    except ValueError:
        return None


def find_previous(out_dir: Path, name: str, version: str) -> Path | None:
    """The highest version of ``name`` below ``version`` among ``out_dir``'s package folders
    (NAME-VERSION/ with a readable manifest); None when there is none."""
    current = _semver(version)
    if current is None or not out_dir.is_dir():
        return None
    found: list[tuple[tuple[int, int, int], Path]] = []
    for manifest in out_dir.glob(f"{name}-*/manifest.json"):
        try:
            package = read_package(manifest.parent)
        except (ContractError, OSError):
            continue  # a folder that is not a package, or half-written
        other = _semver(package.manifest.version)
        if package.manifest.name == name and other is not None and other < current:
            found.append((other, manifest.parent))
    return max(found)[1] if found else None


def previous_figures(root: Path) -> dict[str, Any]:
    """What the report keeps of the package at ``root``; InputError when it is not one."""
    try:
        package = read_package(root)
    except (ContractError, OSError) as exc:
        raise InputError(
            f"--previous {root}: not a package folder ({exc}); give a NAME-VERSION/ folder "
            "`edgewise compile` wrote"
        ) from exc
    manifest = package.manifest
    metrics = manifest.metrics if isinstance(manifest.metrics, Mapping) else {}
    found = metrics.get("stages")
    stages: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    return {
        "name": manifest.name,
        "version": manifest.version,
        "created_at": manifest.created_at,
        "sha256": manifest.model.sha256,
        "stages": {
            stage: {key: figures[key] for key in _KEPT if key in figures}
            for stage, figures in stages.items()
            if isinstance(figures, Mapping)
        },
    }


def previous_for(
    given: Path | None, out_dir: Path, name: str, version: str
) -> dict[str, Any] | None:
    """The figures of ``--previous`` when given, else of the earlier version found in
    ``out_dir``, else None."""
    if given is not None:
        return previous_figures(given)
    found = find_previous(out_dir, name, version)
    return previous_figures(found) if found is not None else None
