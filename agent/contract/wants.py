"""The message a device publishes on ``devices/{id}/wants`` (delivery "request"): which chunks
of which blob it lacks. `edgewise serve` answers each on ``devices/{id}/inbox/{sha256}/{i}``,
QoS 1, not retained. A device asks for at most its window at a time and asks again for what
did not come (after a reconnect, a failover, a lost answer); answering twice is harmless.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.contract.errors import PayloadError
from agent.contract.manifest import MAX_CHUNKS, Sha256, describe_errors
from agent.contract.strictjson import parse_json

MAX_WANTED = 1024  # chunks in one request: the agent's largest chunk_window
MAX_WANTS_BYTES = 16 * 1024  # 1024 indices of up to 5 digits, and the sha256


class ChunkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: Sha256
    chunks: tuple[int, ...] = Field(min_length=1, max_length=MAX_WANTED)

    def encode(self) -> bytes:
        return json.dumps({"sha256": self.sha256, "chunks": list(self.chunks)}).encode()

    @classmethod
    def decode(cls, payload: bytes) -> ChunkRequest:
        """A request as received; PayloadError naming what is wrong."""
        if len(payload) > MAX_WANTS_BYTES:
            raise PayloadError(
                f"a chunk request of {len(payload)} bytes (at most {MAX_WANTS_BYTES})"
            )
        try:
            request = cls.model_validate(parse_json(payload))
        except ValidationError as exc:
            raise PayloadError(f"invalid chunk request: {describe_errors(exc)}") from exc
        if any(not 0 <= i < MAX_CHUNKS for i in request.chunks):
            raise PayloadError(f"a chunk index outside 0..{MAX_CHUNKS - 1}")
        return request
