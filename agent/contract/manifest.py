"""The package manifest: what a model is, how to feed it, and how to read its output.

Validated with pydantic (``extra="forbid"``) so a wrong or unknown field is named in the error.
Every number is bounded and finite and every name checked before anything on the device uses
it: the signature says who made a manifest, not that its values are sane.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from agent.contract.errors import ManifestError
from agent.contract.names import not_reserved
from agent.contract.preprocess import InputTransform, kind_or
from agent.contract.reasons import clip
from agent.contract.topics import ID_CHARS

SCHEMA_VERSION: Literal[2] = 2  # 1: manifests signed in the v1 envelope, still read
DEFAULT_CHUNK_SIZE = 128 * 1024
MAX_VERSION_PART = 2**31 - 1  # a 99999999999999999999999.0.0 would make every real version a replay
MAX_BLOB_BYTES = 2**40
MAX_CHUNK_SIZE = 16 * 2**20
MAX_CHUNKS = 2**16
MAX_GOLDEN_ATOL = 10.0  # looser than this, the golden check no longer tells models apart
MAX_LABEL = 128  # characters: a label travels in every result
MAX_DIM = 2**31 - 1

_SEMVER = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$"


def _bounded_version(value: str) -> str:
    if any(int(part) > MAX_VERSION_PART for part in value.split(".")):
        raise ValueError(f"each part of a version must be at most {MAX_VERSION_PART}")
    return value


SemVer = Annotated[str, Field(pattern=_SEMVER, max_length=32), AfterValidator(_bounded_version)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Label = Annotated[str, Field(max_length=MAX_LABEL)]
Labels = Annotated[tuple[Label, ...], Field(min_length=1, max_length=100_000)]
Dim = Annotated[int, Field(ge=1, le=MAX_DIM)]


# Names become folder and file names on the device: no separators, no "..", no leading dot.
def _no_parent(value: str) -> str:
    if ".." in value:
        raise ValueError(f"{value!r} contains '..'")
    return value


Name = Annotated[
    str,
    Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$"),
    AfterValidator(_no_parent),
    AfterValidator(not_reserved),
]
FileName = Annotated[
    str,
    Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"),
    AfterValidator(_no_parent),
    AfterValidator(not_reserved),
]
# "device:ID", "group:NAME" or "all": where a deployment may be installed.
Target = Annotated[str, Field(pattern=rf"^(all|(device|group):[A-Za-z0-9][{ID_CHARS}]{{0,63}})$")]


def parse_semver(version: str) -> tuple[int, int, int]:
    """``"1.2.3"`` to ``(1, 2, 3)`` so versions compare numerically."""
    match = re.match(_SEMVER, version)
    if not match or len(version) > 32:
        raise ValueError(f"not a MAJOR.MINOR.PATCH version: {version!r}")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _http_url(value: str) -> str:
    if not re.match(r"^https?://[^\s/?#]+[^\s]*$", value):
        raise ValueError("a blob URL must be http:// or https:// with a host and no spaces")
    return value


HttpUrl = Annotated[str, Field(max_length=2048), AfterValidator(_http_url)]
# How a device gets the chunks: "retained" on blobs/{sha256}/{i} (one Mosquitto, no service),
# "request" from `edgewise serve` on the device's own inbox, "http" by Range from model.urls.
Delivery = Literal["retained", "request", "http"]
DELIVERIES: tuple[Delivery, ...] = ("retained", "request", "http")


class BlobSpec(_Strict):
    """A file the package carries (the model, the golden inputs), and the chunks it travels in."""

    path: FileName = "model.onnx"
    sha256: Sha256
    size: int = Field(gt=0, le=MAX_BLOB_BYTES)
    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, gt=0, le=MAX_CHUNK_SIZE)
    chunks: tuple[Sha256, ...] = Field(max_length=MAX_CHUNKS)
    # Where the file can be read with HTTP Range (delivery "http"), tried in order. Untrusted:
    # every chunk is checked against its sha256 above, as over MQTT.
    urls: tuple[HttpUrl, ...] = Field(default=(), max_length=8)

    @model_validator(mode="after")
    def _chunk_count(self) -> BlobSpec:
        expected = math.ceil(self.size / self.chunk_size)
        if len(self.chunks) != expected:
            raise ValueError(f"{len(self.chunks)} chunk hashes for {expected} chunks")
        return self


class InputSpec(_Strict):
    name: str = Field(max_length=256)
    shape: tuple[Dim | None, ...] = Field(max_length=8)  # None marks a dynamic axis (the batch)
    dtype: Literal["float32", "uint8", "int8"] = "float32"


class ClassificationSpec(_Strict):
    kind: Literal["classification"] = "classification"
    labels: Labels
    top_k: int = Field(default=1, gt=0, le=1000)
    softmax: bool = True  # True when the model outputs logits
    min_score: float = Field(default=0.0, ge=0, le=1)


class DetectionSpec(_Strict):
    """YOLO-style boxes: ``yolov8`` outputs [1, 4+classes, N] (cx, cy, w, h, class scores);
    ``yolov5`` outputs [1, N, 5+classes] (cx, cy, w, h, objectness, class scores). Coordinates
    are in model-input pixels; they are mapped back through the letterbox to the frame."""

    kind: Literal["detection"]
    labels: Labels
    format: Literal["yolov8", "yolov5"] = "yolov8"
    score_threshold: float = Field(default=0.25, ge=0, le=1)
    iou_threshold: float = Field(default=0.45, ge=0, le=1)
    max_detections: int = Field(default=100, gt=0, le=10_000)


class ScoreSpec(_Strict):
    """One number out (anomaly score, regression): ``label_above`` when it passes
    ``threshold``, else ``label_below``."""

    kind: Literal["score"]
    threshold: float
    label_above: Label = "anomaly"
    label_below: Label = "normal"


class EventsSpec(_Strict):
    """Keyword spotting: a classifier run on overlapping windows of a stream, reported as events.

    Class probabilities (softmax of the logits when ``softmax``) are averaged over the last
    ``smoothing`` windows; a label not in ``ignore`` whose average reaches its threshold
    (``thresholds[label]``, else ``threshold``) is an event, unless an event fired less than
    ``debounce_s`` of stream time before (one spoken word spans several windows)."""

    kind: Literal["events"]
    labels: Labels
    softmax: bool = True
    threshold: float = Field(default=0.6, gt=0, le=1)
    thresholds: dict[Label, Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=dict, max_length=1000
    )
    ignore: tuple[Label, ...] = Field(default=("_unknown_", "_silence_"), max_length=1000)
    debounce_s: float = Field(default=1.0, ge=0, le=3600)
    smoothing: int = Field(default=1, ge=1, le=100)

    @model_validator(mode="after")
    def _known_labels(self) -> EventsSpec:
        unknown = set(self.thresholds) - set(self.labels)
        if unknown:
            raise ValueError(f"thresholds name labels the model lacks: {sorted(unknown)}")
        if set(self.ignore) >= set(self.labels):
            raise ValueError("every label is ignored: the model could never report an event")
        return self


PostprocessSpec = Annotated[
    Annotated[ClassificationSpec, Tag("classification")]
    | Annotated[DetectionSpec, Tag("detection")]
    | Annotated[ScoreSpec, Tag("score")]
    | Annotated[EventsSpec, Tag("events")],
    kind_or("classification"),
]

TensorName = Annotated[str, Field(min_length=1, max_length=256)]
MAX_STATE_VALUES = 2**24  # a state is held in memory between two runs; bound what a manifest asks


class StateSpec(_Strict):
    """A recurrent model's state: the runtime feeds ``input`` zeros of ``shape`` on the first run
    (and after a reset), then each run's ``output`` as the next run's ``input``."""

    input: TensorName
    output: TensorName
    shape: tuple[Dim, ...] = Field(min_length=1, max_length=8)
    dtype: Literal["float32"] = "float32"

    @model_validator(mode="after")
    def _bounded(self) -> StateSpec:
        if math.prod(self.shape) > MAX_STATE_VALUES:
            raise ValueError(f"state {self.input!r} holds over {MAX_STATE_VALUES} values")
        return self


class ConstantSpec(_Strict):
    """An input fed the same scalar on every run (Silero VAD's sample rate ``sr``)."""

    name: TensorName
    value: float
    dtype: Literal["int64", "float32"] = "int64"


class Manifest(_Strict):
    schema_version: Literal[1, 2] = SCHEMA_VERSION
    name: Name
    version: SemVer
    created_at: str = Field(max_length=64)
    model: BlobSpec
    input: InputSpec
    preprocess: InputTransform
    postprocess: PostprocessSpec
    metrics: dict[str, Any] = Field(default_factory=dict)
    # npz with ``inputs`` (model-ready tensors) and ``outputs`` (what the int8 model returned for
    # them at compile time): a device checks a freshly loaded model against them.
    golden: BlobSpec | None = None
    golden_atol: float = Field(default=1e-3, gt=0, le=MAX_GOLDEN_ATOL)
    min_agent_version: SemVer = "0.1.0"
    # Set when pushing: the signature then binds the package to where it was sent, so a copy
    # republished on another device's topic is refused. None: any target.
    target: Target | None = None
    # A signed rollback: the device accepts this older version instead of treating it as a replay.
    rollback: bool = False
    # Device-side budget for going live, measured on the board before the switch.
    max_latency_ms: float | None = Field(default=None, gt=0, le=3_600_000)
    # How the chunks travel (set when pushing; signed, so a broker cannot redirect a device).
    delivery: Delivery = "retained"
    # "shadow": install and run beside the serving model on sampled frames, never serving nor
    # publishing, until promoted (by command, or by agreement); "serve": go live.
    mode: Literal["serve", "shadow"] = "serve"
    # Recurrent models: the states carried from run to run, and the inputs held constant.
    state: tuple[StateSpec, ...] = Field(default=(), max_length=16)
    constants: tuple[ConstantSpec, ...] = Field(default=(), max_length=16)

    @model_validator(mode="after")
    def _distinct_inputs(self) -> Manifest:
        names = [self.input.name, *(s.input for s in self.state), *(c.name for c in self.constants)]
        if len(set(names)) != len(names):
            raise ValueError(f"model inputs named twice among input, state and constants: {names}")
        return self

    @model_validator(mode="after")
    def _distinct_files(self) -> Manifest:
        if self.golden is not None and self.golden.path == self.model.path:
            raise ValueError("the golden file and the model cannot share a name")
        return self

    @model_validator(mode="after")
    def _urls_for_http(self) -> Manifest:
        if self.delivery == "http" and not all(b.urls for b in self.blobs):
            raise ValueError('delivery "http" needs urls on the model and the golden file')
        return self

    @property
    def blobs(self) -> tuple[BlobSpec, ...]:
        """The model, then the golden inputs when there are any."""
        return (self.model,) if self.golden is None else (self.model, self.golden)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ManifestError(f"invalid manifest: {describe_errors(exc)}") from exc

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def semver(self) -> tuple[int, int, int]:
        return parse_semver(self.version)


def describe_errors(exc: ValidationError, shown: int = 3) -> str:
    """The first few errors as ``field: what is wrong``, never the value received. A field
    is named only when it looks like one (an unknown key came from the payload too)."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    parts = [
        f"{'.'.join(_field(p) for p in e['loc']) or '(top level)'}: {clip(e['msg'], 120)}"
        for e in errors[:shown]
    ]
    more = f" (and {len(errors) - shown} more)" if len(errors) > shown else ""
    return "; ".join(parts) + more


_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,31}$")


def _field(part: str | int) -> str:
    return str(part) if isinstance(part, int) or _FIELD.match(part) else "?"
