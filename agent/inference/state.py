"""What a model is fed on each run besides the frame: constants, the state a recurrent model
carried out of its last run, and the tail of the last audio window (``WaveformSpec.context``).

A ``Feeder`` belongs to one session and one stream: the inference thread's session has one, the
golden check and the probe make their own, starting from the initial state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.contract import Manifest, WaveformSpec, clip


class FeedError(ValueError):
    """The model's inputs or outputs are not the ones the manifest names."""


def check_inputs(session: Any, manifest: Manifest) -> None:
    """The model takes exactly the manifest's input, states and constants; FeedError if not."""
    wanted = {manifest.input.name, *(s.input for s in manifest.state)}
    wanted |= {c.name for c in manifest.constants}
    have = {i.name for i in session.get_inputs()}
    if have != wanted:
        raise FeedError(
            f"model inputs {clip(sorted(have), 100)} do not match the manifest's "
            f"{clip(sorted(wanted), 100)} (input, state and constants)"
        )
    outputs = {o.name for o in session.get_outputs()}
    missing = [s.output for s in manifest.state if s.output not in outputs]
    if missing:
        raise FeedError(f"model lacks the state outputs the manifest names: {clip(missing, 100)}")


class Feeder:
    """Builds each run's feeds and keeps what carries over to the next run."""

    def __init__(self, manifest: Manifest, output_names: list[str]):
        self._manifest = manifest
        self._constants = {c.name: np.asarray(c.value, dtype=c.dtype) for c in manifest.constants}
        # where each state's next value sits in session.run's outputs
        self._slots = {s.input: output_names.index(s.output) for s in manifest.state}
        spec = manifest.preprocess
        self._context = spec.context if isinstance(spec, WaveformSpec) else 0
        self._states: dict[str, np.ndarray] = {}
        self._tail = np.zeros((1, 0), np.float32)
        self.reset()

    @property
    def stateful(self) -> bool:
        return bool(self._slots) or self._context > 0

    def reset(self) -> None:
        """Back to the initial state: a new stream (a file looped, a gap in live audio)."""
        self._states = {s.input: np.zeros(s.shape, s.dtype) for s in self._manifest.state}
        self._tail = np.zeros((1, self._context), np.float32)

    def with_context(self, tensor: np.ndarray) -> np.ndarray:
        """The last window's tail in front of this window (1 × window); keeps this one's tail."""
        if not self._context:
            return tensor
        joined = np.concatenate([self._tail, tensor], axis=1)
        self._tail = joined[:, -self._context :]
        return joined

    def feeds(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """The model-ready input with the constants and the current states."""
        return {self._manifest.input.name: tensor, **self._constants, **self._states}

    def carry(self, outputs: list[np.ndarray]) -> None:
        """Keep this run's state outputs for the next run."""
        for name, slot in self._slots.items():
            self._states[name] = np.array(outputs[slot])  # the runner reuses its outputs

    def run(self, session: Any, tensor: np.ndarray) -> list[np.ndarray]:
        """One run of a model-ready tensor from the current state, which it then advances."""
        outputs = session.run(None, self.feeds(tensor))
        self.carry(outputs)
        return list(outputs)


def feeder_for(session: Any, manifest: Manifest) -> Feeder:
    """A checked Feeder for an ONNX Runtime session of the manifest's model."""
    check_inputs(session, manifest)
    return Feeder(manifest, [o.name for o in session.get_outputs()])
