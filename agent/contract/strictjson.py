"""The one JSON reader for everything a broker delivers (deploy envelopes, sensor samples, the
command topics to come).

Python's ``json`` accepts what JSON does not: ``NaN`` and ``Infinity``, numbers that overflow to
``inf``, ``"\\ud800"`` (a lone surrogate, which cannot be encoded again), duplicate keys (two
readers may keep different ones), and nesting until the interpreter's recursion limit. Each of
those killed the deployer thread once; here each is a :class:`PayloadError`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from agent.contract.errors import PayloadError

MAX_DEPTH = 32  # a manifest nests 4 deep; a sensor sample 2
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number out of float range")
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key in an object")
    return result


def _check_tree(value: Any, max_depth: int) -> None:
    """Depth and strings, walked without recursion (the value may be as deep as the parser let
    it be)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise PayloadError("a string holds a lone surrogate (not UTF-8 text)")
            continue
        if not isinstance(item, dict | list):
            continue
        if depth > max_depth:
            raise PayloadError(f"nested deeper than {max_depth} levels")
        if isinstance(item, dict):
            stack.extend((key, depth) for key in item)
            stack.extend((child, depth + 1) for child in item.values())
        else:
            stack.extend((child, depth + 1) for child in item)


def parse_json(data: bytes | bytearray | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse strict JSON (UTF-8 when bytes) or raise PayloadError; the message never quotes the
    input."""
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
        value = json.loads(
            text, parse_constant=_no_constant, parse_float=_finite, object_pairs_hook=_unique
        )
    except RecursionError:
        raise PayloadError(f"nested deeper than {max_depth} levels") from None
    except UnicodeDecodeError as exc:
        raise PayloadError(f"not UTF-8 (invalid byte at offset {exc.start})") from None
    except ValueError as exc:  # JSONDecodeError says where, never what
        raise PayloadError(f"not JSON: {str(exc).splitlines()[0][:120]}") from None
    _check_tree(value, max_depth)
    return value
