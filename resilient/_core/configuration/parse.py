"""Text to values, for options set through environment variables.

Each parser takes the variable's raw text and returns a value for the option's checker,
or raises :class:`~resilient._core.configuration.options.Invalid`. Nothing is guessed: an empty
string, ``nan``, ``inf``, ``1e309`` (which overflows to inf) or a unit that is not
listed is an error, never a default.
"""

from __future__ import annotations

import math
import re
import sys
from typing import Any

__all__ = [
    "BOOLEANS",
    "Invalid",
    "parse_bool",
    "parse_duration",
    "parse_exceptions",
    "parse_float",
    "parse_import",
    "parse_int",
]


class Invalid(Exception):
    """The text is not a value of the expected kind (also raised by checkers)."""


_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_DURATION = re.compile(rf"({_NUMBER})\s*(ms|s|m|h)?", re.ASCII)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_INT = re.compile(r"\+?\d+", re.ASCII)
_FLOAT = re.compile(rf"\+?{_NUMBER}", re.ASCII)

#: Spellings of true and false (compared in lower case).
BOOLEANS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def parse_duration(text: str) -> float:
    """``250ms``, ``2s``, ``1.5m``, ``1h`` or bare seconds; finite and not negative."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise Invalid
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds):
        raise Invalid
    return seconds


def parse_int(text: str) -> int:
    """A whole number in decimal digits (the checker decides the range)."""
    text = text.strip()
    if _INT.fullmatch(text) is None:
        raise Invalid
    try:
        return int(text)
    except ValueError:  # more digits than int() converts
        raise Invalid from None


def parse_float(text: str) -> float:
    """A finite decimal number, e.g. ``0.25`` or ``2.5e-1``."""
    text = text.strip()
    if _FLOAT.fullmatch(text) is None:
        raise Invalid
    number = float(text)
    if not math.isfinite(number):
        raise Invalid
    return number


def parse_bool(text: str) -> bool:
    try:
        return BOOLEANS[text.strip().lower()]
    except KeyError:
        raise Invalid from None


def parse_import(text: str) -> Any:
    """The object at ``package.module:attr`` or ``package.module.attr`` (or a builtin), in
    a module already imported: a variable never imports code (the application has
    imported its own dependencies by the time its policies read the environment)."""
    path = text.strip()
    if not path or any(c.isspace() for c in path):
        raise Invalid
    if ":" in path:
        module_name, _, attr = path.partition(":")
    elif "." in path:
        module_name, _, attr = path.rpartition(".")
    else:
        module_name, attr = "builtins", path
    obj: Any = sys.modules.get(module_name or "builtins")
    if obj is None:  # not imported (or a relative path): nothing to look in
        raise Invalid
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception:  # no such attribute (or one whose lookup fails)
        raise Invalid from None
    return obj


def parse_exceptions(text: str) -> Any:
    """Comma-separated import paths of exception types (``ConnectionError`` for a
    builtin), as a tuple; or one import path of a predicate; ``none`` for no type."""
    if text.strip().lower() == "none":
        return ()
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise Invalid
    objects = tuple(parse_import(part) for part in parts)
    if len(objects) == 1 and not isinstance(objects[0], type):
        if not callable(objects[0]):
            raise Invalid  # neither an exception type nor a predicate
        return objects[0]  # a predicate
    if not all(isinstance(o, type) and issubclass(o, BaseException) for o in objects):
        raise Invalid
    return objects[0] if len(objects) == 1 else objects
