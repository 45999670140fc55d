"""A content-addressed store of the files packages carry, for ``edgewise serve`` (delivery
"request") and for uploading to a web server (delivery "http").

``DIR/{sha256}`` is the file, ``DIR/{sha256}.json`` its BlobSpec (chunk size and chunk hashes).
A file is written under a temporary name and renamed, so a reader never sees half of it.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

from agent.contract import BlobSpec, ContractError, Package
from agent.contract.strictjson import parse_json

from ..errors import InputError

DEFAULT_STORE = Path("edgewise-blobs")


class BlobStore:
    """Files by sha256. Reading is safe from several threads (``os.pread`` on kept descriptors)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._lock = threading.Lock()
        self._open: dict[str, tuple[int, BlobSpec]] = {}

    def prepare(self) -> BlobStore:
        """Creates the folder; InputError (exit 2) when it cannot be."""
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"--blobs {self.root} is a file, not a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"--blobs {self.root}: cannot create it: {exc.strerror}") from exc
        return self

    def put(self, spec: BlobSpec, path: Path) -> Path:
        """Copies ``path`` in as ``spec`` describes it (again only when the spec changed)."""
        self.prepare()
        target, described = self.root / spec.sha256, self.root / f"{spec.sha256}.json"
        if not (target.is_file() and target.stat().st_size == spec.size):
            partial = self.root / f".{spec.sha256}.partial"
            shutil.copyfile(path, partial)
            os.replace(partial, target)
        body = spec.model_dump_json(indent=1).encode()
        if not described.is_file() or described.read_bytes() != body:
            partial = self.root / f".{spec.sha256}.json.partial"
            partial.write_bytes(body)
            os.replace(partial, described)
        with self._lock:  # a later read takes the new chunk size
            old = self._open.pop(spec.sha256, None)
        if old is not None:
            os.close(old[0])
        return target

    def put_package(self, package: Package, specs: list[BlobSpec] | None = None) -> list[Path]:
        """Every file of ``package`` (described by ``specs`` when a push re-chunked them)."""
        blobs = package.blobs()
        chosen = specs if specs is not None else [spec for spec, _ in blobs]
        return [self.put(spec, path) for spec, (_, path) in zip(chosen, blobs, strict=True)]

    def spec(self, sha256: str) -> BlobSpec | None:
        """The stored description of ``sha256``, or None when the store does not hold it."""
        opened = self._opened(sha256)
        return opened[1] if opened is not None else None

    def specs(self) -> list[BlobSpec]:
        """Every blob in the store, by sha256."""
        found = []
        for described in sorted(self.root.glob("*.json")):
            spec = self._read_spec(described)
            if spec is not None and (self.root / spec.sha256).is_file():
                found.append(spec)
        return found

    def read_chunk(self, sha256: str, index: int) -> bytes | None:
        """Chunk ``index`` of ``sha256``; None when the store lacks the blob or the chunk."""
        opened = self._opened(sha256)
        if opened is None:
            return None
        fd, spec = opened
        if not 0 <= index < len(spec.chunks):
            return None
        return os.pread(fd, spec.chunk_size, index * spec.chunk_size)

    def close(self) -> None:
        with self._lock:
            opened, self._open = list(self._open.values()), {}
        for fd, _ in opened:
            os.close(fd)

    def _opened(self, sha256: str) -> tuple[int, BlobSpec] | None:
        with self._lock:
            found = self._open.get(sha256)
            if found is not None:
                return found
            if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
                return None
            spec = self._read_spec(self.root / f"{sha256}.json")
            if spec is None or spec.sha256 != sha256:
                return None
            try:
                fd = os.open(self.root / sha256, os.O_RDONLY)
            except OSError:
                return None
            self._open[sha256] = (fd, spec)
            return fd, spec

    @staticmethod
    def _read_spec(path: Path) -> BlobSpec | None:
        try:
            return BlobSpec.model_validate(parse_json(path.read_bytes()))
        except (OSError, ValueError, ContractError):
            return None
