"""JSON from untrusted peers, parsed with a bound on nesting depth.

The standard library's decoder recurses once per nesting level: ``[[[[…`` a few thousand levels
deep raises ``RecursionError`` (not ``ValueError``), and anything that later walks the value
recursively (Bolt, jsonschema) can fail the same way. :func:`loads` refuses such input before
decoding it, in time linear in its length.
"""

from __future__ import annotations

import json
import re
from typing import Any

DEFAULT_MAX_DEPTH = 64

# A JSON string literal, possessive so that an unterminated one is consumed to the end of the
# text in one pass instead of being retried from every later quote (quadratic time).
_STRING = re.compile(r'"(?:[^"\\]|\\.)*+"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_PAIRS = str.maketrans("[{]}", "(())")


class JSONLimitError(ValueError):
    """The text is not JSON, or nests deeper than allowed; the message says which."""


def too_deep(text: str, max_depth: int) -> bool:
    """Whether the arrays and objects of ``text`` nest deeper than ``max_depth`` levels.

    Brackets inside string literals do not count. Unbalanced brackets count as too deep
    (such text is not JSON anyway).
    """
    skeleton = _NOT_BRACKET.sub("", _STRING.sub("", text)).translate(_PAIRS)
    # Each pass removes the innermost level: ``max_depth`` passes empty any text that nests
    # at most that deep, each pass one C-speed scan.
    for _ in range(max_depth):
        if not skeleton:
            return False
        shorter = skeleton.replace("()", "")
        if shorter == skeleton:
            return True
        skeleton = shorter
    return bool(skeleton)


def loads(text: str | bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """``json.loads`` for untrusted text.

    Raises:
        JSONLimitError: ``text`` is not UTF-8, not JSON, or nests deeper than ``max_depth``.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise JSONLimitError("not UTF-8") from None
    if too_deep(text, max_depth):
        raise JSONLimitError(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise JSONLimitError(f"not JSON ({getattr(exc, 'msg', type(exc).__name__)})") from None
