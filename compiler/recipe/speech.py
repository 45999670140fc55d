"""A generated speech corpus for keyword spotting: words spoken by espeak-ng in several voices,
speeds and pitches, resampled by sox to 16 kHz mono float, each clip with its own random
effects, and cached on disk by a hash of everything that made it.

Every clip is trimmed to the word (sox's ``silence`` effect on the clean synthesis, before any
noise), so a clip's first and last sample are the word's true extent: the window builder and
the evaluation stream place words exactly and know where speech is. Nothing here touches the
network; espeak-ng and sox are Debian packages (``apt-get install espeak-ng sox``).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from ..errors import CompilerError, InputError

SAMPLE_RATE = 16000
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
LABELS = (*KEYWORDS, UNKNOWN, SILENCE)
# Common words, many of them one sound away from a keyword: these are what a keyword spotter
# falsely accepts in a real room, so the model must have heard them as _unknown_. Homophones of
# a keyword are left out: espeak-ng speaks "know" exactly as "no" and "write" as "right" (same
# phonemes, `espeak-ng -x`), so as _unknown_ they would only be label noise — no acoustic model
# can reject them.
OTHER_WORDS = (
    "yet", "yeah", "yellow", "guess", "snow", "now", "note", "nose", "cup", "bus", "town",
    "brown", "lift", "loft", "bright", "light", "night", "ride", "one", "own", "of",
    "often", "top", "shop", "step", "though", "dog", "goal", "gold", "low", "show", "house",
    "tree", "bird", "cat", "happy", "wow", "zero", "two", "three", "four", "five", "six",
    "seven", "eight", "nine", "learn", "follow", "forward", "marvin", "sheila", "table",
)  # fmt: skip
# espeak-ng voices: an accent, optionally with a timbre variant ("en-gb+f3"). The model trains
# on every combination of TRAIN_ACCENTS and TRAIN_VARIANTS and is judged on HELD_OUT_VOICES,
# whose variants it never heard and two of whose accents it never heard either: the accuracy
# we report is on voices new to it. mbrola voices (mb/...) are a separate package, not used.
TRAIN_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-029")
TRAIN_VARIANTS = (
    "", "m1", "m2", "m3", "m4", "m5", "m6", "f1", "f2", "f3", "f4", "klatt", "klatt2", "klatt3",
    "Alex", "Andy", "adam", "aunty", "belinda", "benjamin", "caleb", "david", "ed", "edward",
    "gustave", "iven", "john", "linda", "max", "Michael", "paul", "rob", "robert", "steph",
    "victor", "grandma", "grandpa", "shelby", "travis", "norbert", "quincy", "Jacky", "Lee",
)  # fmt: skip
TRAIN_VOICES = tuple(f"{a}+{v}" if v else a for a in TRAIN_ACCENTS for v in TRAIN_VARIANTS)
HELD_OUT_VOICES = ("en-gb-x-gbcwmd+f5", "en-us-nyc+m7", "en-029+Annie")
SPEEDS = (120, 145, 170, 195, 220)  # words per minute
PITCHES = (20, 35, 50, 65, 80)
NOISES = ("white", "pink", "brown")
NOISE_SECONDS = 20
CACHE_VERSION = 1  # bump when synthesis changes so that old clips are not reused
TRIM = ("silence", "1", "0.005", "0.5%", "reverse", "silence", "1", "0.005", "0.5%", "reverse")
TOOL_TIMEOUT_S = 30


class ToolMissing(InputError):
    """espeak-ng or sox is not installed."""


class SynthesisError(CompilerError):
    """espeak-ng or sox failed on one clip."""


def require_tools() -> None:
    """One clear line before any work when the synthesizers are missing."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise ToolMissing(f"{tool} not found: apt-get install espeak-ng sox")


@dataclass(frozen=True)
class Effects:
    """What happens to a clean synthesis: gain, an optional small reverb, noise at an SNR."""

    gain_db: float = 0.0
    reverb: int = 0  # sox reverberance 0..100; 0: none
    noise: str | None = None  # one of NOISES, or None
    snr_db: float = 30.0


@dataclass(frozen=True)
class ClipSpec:
    text: str
    voice: str
    speed: int
    pitch: int
    effects: Effects = field(default_factory=Effects)
    seed: int = 0  # where the clip's noise starts in the noise bank

    def key(self) -> str:
        """A hash of everything that made the clip: the cache file's name."""
        text = repr((CACHE_VERSION, sorted(asdict(self).items())))
        return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Clip:
    spec: ClipSpec
    audio: np.ndarray  # float32, 16 kHz mono; first and last sample bound the word


@dataclass
class Corpus:
    clips: list[Clip]
    made: int = 0  # clips synthesized by this call; the rest came from the cache


def _run(command: Sequence[str]) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    except FileNotFoundError as exc:
        raise ToolMissing(f"{command[0]} not found: apt-get install espeak-ng sox") from exc
    except subprocess.TimeoutExpired as exc:
        raise SynthesisError(f"{command[0]} took over {TOOL_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise SynthesisError(f"{command[0]} failed ({done.returncode}): {last}")


def noise_bank(cache: Path) -> dict[str, np.ndarray]:
    """NOISE_SECONDS of each noise colour from sox ``synth``, scaled to unit RMS (cached)."""
    cache.mkdir(parents=True, exist_ok=True)
    bank = {}
    for colour in NOISES:
        path = cache / f"noise-{colour}-{CACHE_VERSION}.wav"
        if not path.exists():
            tmp = path.with_suffix(".part.wav")
            rate, seconds = str(SAMPLE_RATE), str(NOISE_SECONDS)
            _run(["sox", "-R", "-n", "-r", rate, "-c", "1", "-e", "floating-point", str(tmp),
                  "synth", seconds, f"{colour}noise"])  # fmt: skip
            tmp.replace(path)
        noise = sf.read(path, dtype="float32")[0]
        bank[colour] = (noise / max(float(np.sqrt(np.mean(noise**2))), 1e-9)).astype(np.float32)
    return bank


def noise_segment(bank: dict[str, np.ndarray], colour: str, length: int, start: int) -> np.ndarray:
    """``length`` samples of unit-RMS noise, wrapping around the bank."""
    noise = bank[colour]
    return np.take(noise, np.arange(start, start + length), mode="wrap")


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0


def synthesize(
    text: str,
    voice: str,
    speed: int,
    pitch: int,
    path: Path,
    *,
    effects: Effects | None = None,
    bank: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Speaks ``text`` into ``path`` (16 kHz mono float WAV) and returns the samples: espeak-ng,
    then sox to resample, reverberate, trim to the word and set the gain; then noise from
    ``bank`` mixed at ``effects.snr_db`` over the word."""
    effects = effects or Effects()
    with tempfile.TemporaryDirectory(prefix="edgewise-tts-") as tmp:
        raw = Path(tmp) / "raw.wav"
        _run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw), text])
        chain = ["reverb", str(effects.reverb), "50", "40"] if effects.reverb else []
        out = Path(tmp) / "clip.wav"
        convert = ["-r", str(SAMPLE_RATE), "-c", "1", "-e", "floating-point", str(out)]
        _run(["sox", "-R", str(raw), *convert, *chain, *TRIM, "gain", f"{effects.gain_db:.2f}"])
        audio = sf.read(out, dtype="float32")[0]
    if audio.size == 0:
        raise SynthesisError(f"espeak-ng gave silence for {text!r} in voice {voice}")
    if effects.noise is not None:
        if bank is None:
            raise ValueError("noise effects need a noise bank")
        level = rms(audio) / 10 ** (effects.snr_db / 20)
        audio = audio + level * noise_segment(bank, effects.noise, audio.size, seed)
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, SAMPLE_RATE, subtype="FLOAT")
    return audio


def random_effects(rng: np.random.Generator) -> Effects:
    """Gain -12..+3 dB, reverb on a quarter of the clips, noise at 15..40 dB SNR on most."""
    noisy = rng.random() < 0.7
    return Effects(
        gain_db=round(float(rng.uniform(-12, 3)), 1),
        reverb=int(rng.integers(10, 40)) if rng.random() < 0.25 else 0,
        noise=str(rng.choice(NOISES)) if noisy else None,
        snr_db=round(float(rng.uniform(15, 40)), 1),
    )


def plan(words: Iterable[str], voices: Sequence[str], per_word: int, seed: int) -> list[ClipSpec]:
    """``per_word`` clips of each word, each in a voice drawn from ``voices`` (in turn, in a
    random order, so that every voice is heard before any twice) at a random speed, pitch and
    set of effects; the same arguments give the same plan (and so hit the same cache files)."""
    if not voices:
        raise ValueError("a plan needs at least one voice")
    rng = np.random.default_rng(seed)
    specs = []
    for word in words:
        order = rng.permutation(len(voices))
        for i in range(per_word):
            voice = voices[int(order[i % len(voices)])]
            speed, pitch = int(rng.choice(SPEEDS)), int(rng.choice(PITCHES))
            start = int(rng.integers(0, NOISE_SECONDS * SAMPLE_RATE))
            specs.append(ClipSpec(word, voice, speed, pitch, random_effects(rng), start))
    return specs


def _load_or_make(spec: ClipSpec, folder: Path, bank: dict[str, np.ndarray]) -> tuple[Clip, bool]:
    path = folder / f"{spec.key()}.wav"
    if path.exists():
        return Clip(spec, sf.read(path, dtype="float32")[0]), False
    tmp = path.with_name(f"{path.stem}.part.wav")
    audio = synthesize(
        spec.text, spec.voice, spec.speed, spec.pitch, tmp,
        effects=spec.effects, bank=bank, seed=spec.seed,
    )  # fmt: skip
    tmp.replace(path)  # whole files only: an interrupted run leaves no half clip in the cache
    return Clip(spec, audio), True


def build_corpus(
    cache: Path, specs: Sequence[ClipSpec], *, workers: int = 2, progress: bool = False
) -> Corpus:
    """The clips ``specs`` describe, from ``cache`` where they are there and synthesized (in
    ``workers`` threads, each waiting on its own espeak-ng/sox process) where not."""
    from tqdm import tqdm

    require_tools()
    bank = noise_bank(cache)
    folder = cache / "clips"
    folder.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        done = list(
            tqdm(
                pool.map(lambda s: _load_or_make(s, folder, bank), specs),
                total=len(specs), desc="speech", unit="clip", disable=not progress,
            )
        )  # fmt: skip
    return Corpus([clip for clip, _ in done], sum(made for _, made in done))
