"""Configuration: built-in defaults, then the code's keywords, then the environment.

An operator retunes or switches off a named policy without a code change::

    RESILIENT_<NAME>_<KIND>_<OPTION>     one policy (NAME: its name upper-cased, every
                                         run of other characters than A-Z, 0-9 made "_")
    RESILIENT_DEFAULT_<KIND>_<OPTION>    every policy of a kind, named or not
    RESILIENT_ENABLED=0                  every policy a pass-through

Precedence, low to high: the option's declared default, the keyword given in code, the
kind-wide variable, the policy's own variable. The environment is read when a policy is
made and again by :func:`reload`, never at import. Every value is parsed and checked by
the option's own declaration (``_core/configuration/options.py``); all the bad
variables of a policy are reported together, in one :class:`ConfigError`.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

from resilient._core.configuration import options as opt
from resilient._core.configuration.parse import parse_bool
from resilient._core.state.primitives import SWITCH
from resilient._errors import ConfigError, ConfigWarning

__all__ = [
    "ENABLED",
    "KINDS",
    "Parts",
    "Settings",
    "default_variable",
    "env_name",
    "environment",
    "invalid_variables",
    "known_variables",
    "markdown_table",
    "parts_of",
    "plausible",
    "resolve",
    "unknown_variables",
    "variable",
    "warn",
    "warn_unknown",
]

PREFIX = "RESILIENT_"
#: The emergency switch: ``RESILIENT_ENABLED=0`` makes every policy a pass-through.
ENABLED = "RESILIENT_ENABLED"


class _Kinds(MutableMapping[str, tuple[opt.Option, ...]]):
    """Every kind's declared options, by kind ("breaker", ...); each policy module adds
    its own as it is imported. The modules ``import resilient`` leaves for later
    (``LAZY_KINDS``) are imported the first time every kind is asked for, or one that
    is not there yet: a variable of theirs is known before their first use."""

    def __init__(self) -> None:
        self._kinds: dict[str, tuple[opt.Option, ...]] = {}
        self._complete = False

    def _load(self) -> None:
        if not self._complete:
            self._complete = True
            for module in LAZY_KINDS:
                __import__(module)

    def __getitem__(self, kind: str) -> tuple[opt.Option, ...]:
        if kind not in self._kinds:
            self._load()
        return self._kinds[kind]

    def __setitem__(self, kind: str, options: tuple[opt.Option, ...]) -> None:
        self._kinds[kind] = options

    def __delitem__(self, kind: str) -> None:
        del self._kinds[kind]

    def __iter__(self) -> Iterator[str]:
        """Ours in one order (listings and the docs' table stay the same whichever
        policy was imported first), then any other in the order it came."""
        self._load()
        kinds = self._kinds
        return iter([*(k for k in _ORDER if k in kinds), *(k for k in kinds if k not in _ORDER)])

    def __len__(self) -> int:
        self._load()
        return len(self._kinds)


#: The policy modules ``import resilient`` does not import (see resilient.__getattr__).
LAZY_KINDS = ("resilient._ratelimit", "resilient._hedge", "resilient._faults")
KINDS = _Kinds()
_ORDER = (
    "breaker",
    "retry",
    "timeout",
    "bulkhead",
    "fallback",
    "rate_limiter",
    "hedge",
    "fault",
    "latency",
    "result",
)
#: Each kind's class name ("breaker": "CircuitBreaker"), for listings; added with KINDS.
TITLES: dict[str, str] = {}


@functools.lru_cache(maxsize=1024)
def env_name(name: str) -> str:
    """A name as variables spell it: ``payments-api.v2`` -> ``PAYMENTS_API_V2``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).upper()


def variable(kind: str, option: str, name: str) -> str:
    return f"{PREFIX}{env_name(name)}_{kind.upper()}_{option.upper()}"


def default_variable(kind: str, option: str) -> str:
    return f"{PREFIX}DEFAULT_{kind.upper()}_{option.upper()}"


class Settings:
    """One policy's resolved options, and where each value came from."""

    __slots__ = ("enabled", "sources", "texts", "values")

    def __init__(
        self,
        values: Mapping[str, Any],
        sources: Mapping[str, str],
        texts: Mapping[str, str] = MappingProxyType({}),
        enabled: bool = True,
    ) -> None:
        self.values = values
        #: per option: "default", "code", or the environment variable that set it
        self.sources = sources
        #: per option set by the environment: the variable's raw text
        self.texts = texts
        self.enabled = enabled

    def __repr__(self) -> str:
        return f"Settings({dict(self.values)!r}, enabled={self.enabled})"

    def __getitem__(self, option: str) -> Any:
        return self.values[option]

    def blame(self, option: str) -> tuple[str, Any]:
        """What to name in an error about ``option``: its variable and text, or itself."""
        source = self.sources[option]
        if source.startswith(PREFIX):
            return source, self.texts[option]
        return option, self.values[option]


def resolve(
    kind: str,
    options: Sequence[opt.Option],
    given: Mapping[str, Any],
    *,
    name: str | None,
    owner: str,
    environ: Mapping[str, str] | None = None,
    family: Sequence[str] = (),
) -> Settings:
    """Defaults, then ``given`` (validated: a bad keyword raises at once), then the
    environment (every bad variable reported together): the policy's own variable, else
    its ``family``'s, nearest first (a transport's per-host breakers: the transport's,
    then their template's), else the kind's default."""
    env = os.environ if environ is None else environ
    values = opt.resolve(options, given, owner)
    # A signature's default arrives like any keyword; a value equal to the declared
    # default is reported as the default, which it is either way.
    sources = {
        o.name: "code" if o.name in given and not _same(given[o.name], o) else "default"
        for o in options
    }
    texts: dict[str, str] = {}
    errors: list[ConfigError] = []
    for option in options:
        names = [variable(kind, option.name, n) for n in (name, *family) if n is not None]
        for var in (*names, default_variable(kind, option.name)):
            if var not in env:
                continue
            raw = env[var]
            try:
                values[option.name] = option.from_text(raw)
            except opt.Invalid as invalid:
                expected = option.expecting(raw, invalid, as_text=True)
                errors.append(ConfigError(var, raw, expected, owner=owner))
            else:
                sources[option.name] = var
                texts[option.name] = raw
            break  # the nearest variable wins; a bad one never falls back
    enabled = True
    if ENABLED in env:
        try:
            enabled = parse_bool(env[ENABLED])
        except opt.Invalid:
            expected = "a boolean: 1/0, true/false, yes/no, on/off"
            errors.append(ConfigError(ENABLED, env[ENABLED], expected, owner=owner))
    if errors:
        raise ConfigError.combine(errors)
    return Settings(values, sources, texts, enabled)


def _same(value: Any, option: opt.Option) -> bool:
    default = option.default
    if value is default:
        return True
    try:
        return type(value) is type(default) and bool(value == default)
    except Exception:  # an __eq__ that cannot answer: say "code"
        return False


def environment() -> dict[str, str]:
    """A copy of ``os.environ`` that one reload reads throughout: every policy sees the
    same variables, even while another thread sets or deletes some (copying can then
    meet a key deleted under it: copy again)."""
    while True:
        try:
            return dict(os.environ)
        except (KeyError, RuntimeError):  # changed while being copied
            continue


def known_variables(policies: Iterable[tuple[str, str | None]]) -> set[str]:
    """Every variable that means something, given the live (kind, name) pairs."""
    known = {ENABLED, SWITCH, MAX_WORKERS_VARIABLE}
    for kind, options in KINDS.items():
        known.update(default_variable(kind, option.name) for option in options)
    for kind, name in policies:
        if name is not None:
            known.update(variable(kind, option.name, name) for option in KINDS[kind])
    return known


class Parts(NamedTuple):
    """What a ``RESILIENT_<NAME>_<KIND>_<OPTION>`` variable sets."""

    #: the name as variables spell it ("PER_HOST"); "DEFAULT" for the kind-wide variable
    name: str
    kind: str
    option: opt.Option


#: A name as :func:`env_name` spells one: A-Z, 0-9 and "_", at least one letter or digit.
_SPELT_NAME = re.compile(r"_*[A-Z0-9][A-Z0-9_]*")


def parts_of(var: str) -> Parts | None:
    """The name, kind and option of a well-formed variable, or None. The longest
    ``_<KIND>_<OPTION>`` that ends it wins (``..._RETRY_MAX_WAIT`` is max_wait, not
    wait), and the rest is the name, underscores and all: ``RESILIENT_PER_HOST_BREAKER_
    FAILURE_RATE`` is the breaker named "per_host" (or "per-host", which spells alike)."""
    if not var.startswith(PREFIX):
        return None
    best: Parts | None = None
    best_len = 0
    for kind, options in KINDS.items():
        for option in options:
            suffix = f"_{kind.upper()}_{option.name.upper()}"
            if var.endswith(suffix) and len(suffix) > best_len:
                best_len = len(suffix)
                best = Parts(var[len(PREFIX) : -len(suffix)], kind, option)
    return best if best is not None and _SPELT_NAME.fullmatch(best.name) else None


def invalid_variables(environ: Mapping[str, str] | None = None) -> list[ConfigError]:
    """Every set ``RESILIENT_*`` variable whose text its option would refuse, whether or
    not a policy that reads it exists yet (for ``resilient config --check``)."""
    env = os.environ if environ is None else environ
    errors: list[ConfigError] = []
    for var in sorted(env):
        raw = env[var]
        if var == ENABLED:
            try:
                parse_bool(raw)
            except opt.Invalid:
                errors.append(ConfigError(var, raw, "a boolean: 1/0, true/false, yes/no, on/off"))
            continue
        if var == SWITCH:
            if raw.strip().lower() not in ("auto", "locked"):
                errors.append(ConfigError(var, raw, "'auto' or 'locked'"))
            continue
        if var == MAX_WORKERS_VARIABLE:
            try:
                parse_max_workers(raw)
            except ConfigError as error:
                errors.append(error)
            continue
        parts = parts_of(var)
        if parts is None:
            continue
        option = parts.option
        try:
            option.from_text(raw)
        except opt.Invalid as invalid:
            errors.append(ConfigError(var, raw, option.expecting(raw, invalid, as_text=True)))
    return errors


def plausible(var: str) -> bool:
    """Whether ``var`` is well formed for some policy name: RESILIENT_<name>_<KIND>_<OPTION>
    with a known kind and option (a policy of that name may simply not be made yet)."""
    return parts_of(var) is not None


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice ``word`` was most likely meant to be, if any is close (a typo)."""
    import difflib  # only when something is misspelt

    return next(iter(difflib.get_close_matches(word, choices, n=1, cutoff=0.8)), None)


def unknown_variables(
    known: set[str], environ: Mapping[str, str] | None = None
) -> list[tuple[str, str | None]]:
    """``RESILIENT_*`` variables that match nothing known, each with a close match if any."""
    env = os.environ if environ is None else environ
    return [
        (var, _suggestion(var, known))
        for var in sorted(env)
        if var.startswith(PREFIX) and var not in known
    ]


def _suggestion(var: str, known: set[str]) -> str | None:
    """What ``var`` may have meant. Well formed, it is valid for a policy made later, or
    the same option of a live policy whose name it misspells (names compared alone: two
    long variables that share their kind and option always look alike). Otherwise, first
    the variable with its name (upper-cased) and the kind or option it nearly spells,
    then a known variable."""
    parts = parts_of(var)
    if parts is None:
        return closest(var.upper(), _respellings(var)) or closest(var, known)
    suffix = var[len(PREFIX) + len(parts.name) :]
    names = {
        other.name
        for k in known
        if k.endswith(suffix) and (other := parts_of(k)) and other.option is parts.option
    }
    names.discard("DEFAULT")  # the kind-wide variable is no misspelling of a name
    close = closest(parts.name, names)
    return f"{PREFIX}{close}{suffix}" if close else None


def _respellings(var: str) -> set[str]:
    """Well-formed variables with ``var``'s name and the kind or option it nearly spells."""
    rest = var[len(PREFIX) :]
    found: set[str] = set()
    for kind, options in KINDS.items():
        name, sep, _ = rest.rpartition(f"_{kind.upper()}_")  # a misspelt option
        if sep and name:
            found.update(variable(kind, option.name, name) for option in options)
        for option in options:  # a misspelt kind, of one word or of as many as it has
            if rest.endswith(f"_{option.name.upper()}"):
                words = rest[: -len(option.name) - 1].split("_")
                for spelt in {1, kind.count("_") + 1}:
                    name = "_".join(words[:-spelt])
                    if name:
                        found.add(variable(kind, option.name, name))
    return found


#: Where resilient's own code lives: a warning names the first caller outside it.
_PACKAGE = os.path.dirname(os.path.dirname(os.path.dirname(__file__))) + os.sep


def warn(message: str) -> None:
    """A ConfigWarning pointing at the user's line that led to it (made a policy or a
    Pipeline, called reload), however deep in resilient it was found."""
    frame = sys._getframe(1)
    level = 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    warnings.warn(message, ConfigWarning, stacklevel=level)


def warn_unknown(unknown: Sequence[tuple[str, str | None]]) -> None:
    for var, suggestion in unknown:
        hint = f"; did you mean {suggestion}?" if suggestion else ""
        warn(f"{var} matches no option of any resilient policy{hint}")


def markdown_table() -> str:
    """Every variable, as a Markdown table for docs/configuration.md (a test keeps it in step)."""
    rows = [
        "| variable | written as | default | what it does |",
        "| --- | --- | --- | --- |",
        f"| `{ENABLED}` | 1/0, true/false, yes/no, on/off | `1` |"
        " `0` makes every policy a pass-through: the emergency switch. |",
        f"| `{SWITCH}` | auto, locked | `auto` |"
        " `locked`: the state core's locked variants, which a free-threaded build uses,"
        " on any build (read once, at import; for testing them). |",
        f"| `{MAX_WORKERS_VARIABLE}` | a whole number, e.g. 64 | `{MAX_WORKERS}` |"
        " The most worker threads sync Timeouts run at once, all together; beyond it a"
        " call is refused with WorkersExhaustedError (read whenever a thread would start). |",
    ]
    for kind, options in KINDS.items():
        if not options:
            continue
        for option in options:
            default = (
                "required in code"
                if option.default is opt.REQUIRED
                else f"`{getattr(option.default, '__name__', None) or repr(option.default)}`"
            )
            var = f"{PREFIX}<NAME>_{kind.upper()}_{option.name.upper()}"
            cells = (f"`{var}`", option.syntax, default, option.doc)
            rows.append("| " + " | ".join(map(opt.cell, cells)) + " |")
    return "\n".join(rows)


#: The most worker threads the process runs at once, for every Timeout together: a hung
#: downstream behind many Timeouts (or a Timeout made per request) must not take every
#: thread the process can have. Beyond it a call is refused, never queued.
MAX_WORKERS = 64
MAX_WORKERS_VARIABLE = "RESILIENT_MAX_WORKERS"


def parse_max_workers(raw: str) -> int:
    """``RESILIENT_MAX_WORKERS``'s text as a number, or a ConfigError naming it."""
    try:
        return opt.positive_int(opt.positive_int.parse(raw))  # type: ignore[attr-defined]
    except opt.Invalid:
        raise ConfigError(
            MAX_WORKERS_VARIABLE, raw, "a whole number from 1 to 1,000,000"
        ) from None
