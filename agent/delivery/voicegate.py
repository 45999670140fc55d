"""The ``[gate]`` package made a :class:`VoiceGate`: the folder verified as an installed package
is (signature by a ``[trust]`` key, every file's sha256), checked to be a voice-activity model
that hears the audio source's sample rate, then loaded and golden-checked like any package.

``check-config`` runs :func:`gate_problems` (no model loaded, no ONNX Runtime imported); the
daemon runs :func:`build_gate`. Both give one line naming the key and what to do.
"""

from __future__ import annotations

from agent.config import AgentConfig
from agent.contract import MANIFEST_FILE, ContractError, Package, TrustStore, WaveformSpec
from agent.delivery.store import verified_folder
from agent.errors import ConfigError, ModelLoadError
from agent.inference.gate import VoiceGate, vad_problem

BUILD = "build one with `edgewise vad --key KEY --out DIR`"


def gate_package(config: AgentConfig) -> Package | None:
    """The verified gate package; None without ``[gate]`` or with ``enabled = false``."""
    gate, source = config.gate, config.source
    if gate is None or not gate.enabled:
        return None
    if source.kind != "audio":
        raise ConfigError(
            f'gate: a voice gate needs an audio source (source.kind = "audio"), not '
            f"{source.kind!r}: remove [gate] or set enabled = false"
        )
    try:
        trust = TrustStore.from_files(config.trust.public_keys)
        package = verified_folder(gate.package, MANIFEST_FILE, trust)
    except OSError as exc:
        raise ConfigError(
            f"gate.package: cannot read {exc.filename or gate.package}: {exc.strerror}: give "
            f"the folder `edgewise vad` wrote ({BUILD})"
        ) from exc
    except ContractError as exc:
        raise ConfigError(f"gate.package: {gate.package}: {exc}") from exc
    problem = vad_problem(package.manifest)
    if problem:
        raise ConfigError(f"gate.package: {problem}; {BUILD}")
    spec = package.manifest.preprocess
    assert isinstance(spec, WaveformSpec)  # vad_problem checked it
    if source.sample_rate != spec.sample_rate:
        raise ConfigError(
            f"gate: the audio source gives {source.sample_rate} Hz, the VAD hears "
            f"{spec.sample_rate} Hz: set source.sample_rate = {spec.sample_rate}"
        )
    return package


def gate_problems(config: AgentConfig) -> list[str]:
    """What keeps the configured gate from running, as preflight lists problems."""
    try:
        gate_package(config)
    except ConfigError as exc:
        return [str(exc)]
    return []


def build_gate(config: AgentConfig) -> VoiceGate | None:
    """The voice gate the config asks for, its VAD loaded; None without one."""
    package = gate_package(config)
    if package is None or config.gate is None:
        return None
    from agent.inference.runtime import load_package  # ONNX Runtime: only when a gate runs

    try:
        session = load_package(package, config.runtime)
    except ModelLoadError as exc:
        raise ConfigError(f"gate.package: {exc}") from exc
    gate = config.gate
    return VoiceGate(session, threshold=gate.threshold, hangover_s=gate.hangover_s)
