"""What the probe child checks before a candidate may reach the serving process.

A signed manifest can still be unusable: labels that do not match the model's scores, an input
dtype or shape the model does not take. Each check here raises Unfit with a short reason; the
child reports it and the candidate is rejected. The checks run the very functions the serving
process runs (preprocess, ``session.run``, postprocess), so what passes here cannot fail there
for a reason the manifest could have told. The golden check is the serving process's own
(agent.inference.golden).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.contract import Manifest, clip, to_tensor
from agent.inference.events import Postprocessor
from agent.inference.runtime import blank_sample
from agent.inference.state import FeedError, feeder_for

ELEMENT = {"float32": "tensor(float)", "uint8": "tensor(uint8)", "int8": "tensor(int8)"}


class Unfit(Exception):
    """The candidate does not fit its manifest or this device; the message says how."""


def _fits(declared: list[object], wanted: list[int | None]) -> bool:
    if len(declared) != len(wanted):
        return False
    return all(
        not isinstance(d, int) or w is None or d == w for d, w in zip(declared, wanted, strict=True)
    )


def check_input(session: Any, manifest: Manifest) -> str:
    """The model's inputs against the manifest's (input, state, constants), and its main input
    against the manifest's dtype and shape and what the preprocessing produces; returns the
    main input's name."""
    try:
        feeder_for(session, manifest)
    except FeedError as exc:
        raise Unfit(str(exc)) from None
    model = next(i for i in session.get_inputs() if i.name == manifest.input.name)
    declared = ELEMENT[manifest.input.dtype]
    if model.type != declared:
        raise Unfit(
            f"manifest declares input dtype {manifest.input.dtype}, the model takes {model.type}"
        )
    source = manifest.preprocess.input_shape(1)
    produced = ELEMENT.get(manifest.preprocess.dtype)
    if not _fits(list(model.shape), source) or model.type != produced:
        raise Unfit(
            f"model input {model.name!r} {model.type} {clip(model.shape, 60)} does not fit the "
            f"source tensor {produced} {source}"
        )
    if not _fits(list(model.shape), list(manifest.input.shape)):
        raise Unfit(
            f"manifest declares input shape {list(manifest.input.shape)}, the model takes "
            f"{clip(model.shape, 60)}"
        )
    return str(model.name)


def check_serving_path(session: Any, manifest: Manifest) -> dict[str, np.ndarray]:
    """A blank frame or window through preprocess → model → postprocess, as serving does it;
    returns the model-ready feeds (the sample, constants and states)."""
    sample = blank_sample(manifest.preprocess)
    tensor = to_tensor(sample, manifest.preprocess).astype(manifest.input.dtype, copy=False)
    feeder = feeder_for(session, manifest)
    feeds = feeder.feeds(feeder.with_context(tensor))
    outputs = session.run(None, feeds)
    try:
        Postprocessor(manifest.postprocess, manifest.preprocess)(outputs, sample.shape, 0.0)
    except (ValueError, IndexError, TypeError) as exc:
        raise Unfit(f"postprocessing does not fit the model's output: {clip(exc, 160)}") from exc
    return feeds
