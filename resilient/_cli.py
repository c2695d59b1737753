"""The ``resilient`` command: ``demo``, ``env`` and ``config``, and ``--version``.

Built on argparse: the command has three subcommands and a handful of options, which
argparse says well enough, and resilient takes no dependency for its command line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from resilient._core.configuration import config
from resilient._core.configuration.options import REQUIRED
from resilient._core.configuration.registry import Configured, registry
from resilient._core.state.primitives import SWITCH
from resilient._errors import ConfigError

__all__ = ["main"]

#: Exit codes: 0 all well; 1 the configuration has a problem; 2 the command was misused.
OK, PROBLEM, USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        import resilient

        print(f"{resilient._DISTRIBUTION} {resilient.__version__}")
        return OK
    if args.command is None:
        parser.print_help()
        return USAGE
    try:
        return int(args.run(args))
    except BrokenPipeError:  # piped into head: not an error (as the Python docs advise)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resilient",
        description="Circuit breakers, retries, timeouts and bulkheads for Python.",
        epilog="Every policy with a name can be retuned without a code change through"
        " RESILIENT_<NAME>_<KIND>_<OPTION> variables; 'resilient env' lists them.",
    )
    # Not argparse's "version" action: that would read the metadata for every command.
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="watch a flaky downstream, called with and without resilience",
        add_help=False,  # the demo's own parser answers --help
        prefix_chars="\0",  # no argument can hold a NUL: each one is left for the demo
    )
    demo.add_argument("demo_args", nargs=argparse.REMAINDER)
    demo.set_defaults(run=_demo)

    env = commands.add_parser(
        "env",
        help="list every RESILIENT_* variable: type, default, range, meaning",
        description="List every environment variable resilient reads, with the values it"
        " accepts and its default. Variables set now are marked with their value.",
    )
    env.add_argument("--json", action="store_true", help="print JSON for machines")
    env.set_defaults(run=_env)

    cfg = commands.add_parser(
        "config",
        help="import your module and show each policy's effective configuration",
        description="Import MODULE (or MODULE:ATTR), then print the effective"
        " configuration of every named policy it made, and where each value came from:"
        " the default, your code, or an environment variable. A variable for a name no"
        " live policy has (one a factory makes later) is checked all the same, and shown"
        " as applying when that policy is made.",
    )
    cfg.add_argument("target", metavar="MODULE[:ATTR]", help="e.g. myapp.clients or app:pipe")
    cfg.add_argument(
        "--check",
        action="store_true",
        help="exit with 1 if any RESILIENT_* variable is invalid or names no kind or"
        " option that exists (for a deploy pipeline)",
    )
    cfg.add_argument(
        "--strict",
        action="store_true",
        help="--check, and also exit with 1 if a variable names a policy no live policy"
        " has (for an app that makes every policy as it imports: a misspelt name)",
    )
    cfg.add_argument("--json", action="store_true", help="print JSON for machines")
    cfg.set_defaults(run=_config)
    return parser


def _demo(args: argparse.Namespace) -> int:
    """The demo is an application: imported, and its arguments parsed, only when it runs,
    so that neither ``import resilient`` nor the other commands load it."""
    from resilient._demo.command import main

    return main(args.demo_args)


# -- resilient env ---------------------------------------------------------------------------


def _env_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {
            "variable": config.ENABLED,
            "kind": None,
            "option": None,
            "syntax": "a boolean: 1/0, true/false, yes/no, on/off",
            "default": True,
            "required": False,
            "accepts": "a boolean",
            "doc": "0 makes every policy a pass-through: the emergency switch.",
        },
        {
            "variable": SWITCH,
            "kind": None,
            "option": None,
            "syntax": "auto or locked",
            "default": "auto",
            "required": False,
            "accepts": "'auto' or 'locked'",
            "doc": "locked: the state core's locked variants (what a free-threaded build"
            " runs) on any build; read once, at import.",
        },
        {
            "variable": config.MAX_WORKERS_VARIABLE,
            "kind": None,
            "option": None,
            "syntax": "a whole number, e.g. 64",
            "default": config.MAX_WORKERS,
            "required": False,
            "accepts": "a whole number from 1 to 1,000,000",
            "doc": "The most worker threads sync Timeouts run at once, all together.",
        },
    ]
    for kind, options in config.KINDS.items():
        for option in options:
            rows.append(
                {
                    "variable": f"{config.PREFIX}<NAME>_{kind.upper()}_{option.name.upper()}",
                    "default_variable": config.default_variable(kind, option.name),
                    "kind": kind,
                    "option": option.name,
                    "syntax": option.syntax,
                    "default": None if option.default is REQUIRED else option.default,
                    "required": option.default is REQUIRED,
                    "accepts": option.expected,
                    "doc": option.doc,
                }
            )
    return rows


def _env(args: argparse.Namespace) -> int:
    rows = _env_rows()
    set_now = {k: v for k, v in os.environ.items() if k.startswith(config.PREFIX)}
    if args.json:
        print(_json({"variables": rows, "set": set_now}))
        return OK
    print(
        "Variables resilient reads. <NAME> is a policy's name upper-cased, every run of"
        " other characters than letters and digits made '_'.\nPrecedence, low to high:"
        " the default, your code, RESILIENT_DEFAULT_<KIND>_<OPTION>,"
        " RESILIENT_<NAME>_<KIND>_<OPTION>.\n"
    )
    print(
        "Pipeline(..., name='pay') names its unnamed policies by role: 'pay' for the only"
        " one of its kind, 'pay.total' and 'pay.attempt' for two around the Retry"
        " (RESILIENT_PAY_ATTEMPT_TIMEOUT_SECONDS); 'resilient config' lists them.\n"
    )
    kind = object()
    for row in rows:
        if row["kind"] != kind:
            kind = row["kind"]
            print(f"== {config.TITLES.get(kind, 'all policies') if kind else 'all policies'} ==")
        print(f"{row['variable']}")
        if row.get("default_variable"):
            print(f"  or {row['default_variable']}")
        print(f"  {row['doc']}")
        print(f"  accepts: {row['accepts']}; written as {row['syntax']}")
        print(f"  default: {'(required in code)' if row['required'] else _show(row['default'])}")
    if set_now:
        print("\nSet now:")
        for var, value in sorted(set_now.items()):
            print(f"  {var}={value}")
    return OK


# -- resilient config ------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> int:
    module_name, _, attr = args.target.partition(":")
    sys.path.insert(0, os.getcwd())
    # The policies this import makes: those born after the newest live one (in a fresh
    # process, all; when main() runs in a process that made some, not those; when the
    # module was imported before, nothing tells them apart: all).
    newest = (
        -1 if module_name in sys.modules else max((p._born for p in registry._live()), default=-1)
    )
    try:
        module = importlib.import_module(module_name)
        target = _lookup(module, attr) if attr else None
    except ConfigError as error:  # a bad variable, raised as the module made its policies
        return _report_invalid(args, error)
    except Exception as error:  # missing, misspelt, or failing as it imports
        print(f"resilient config: cannot load {args.target}: {error!r}", file=sys.stderr)
        return USAGE
    except SystemExit as exit_:  # a module that exits as it imports made nothing to show
        print(
            f"resilient config: {args.target} exited while importing"
            f" (SystemExit({exit_.code!r})): nothing to check it against",
            file=sys.stderr,
        )
        invalid = config.invalid_variables()  # the variables can still be judged alone
        for bad in invalid:
            print(f"error: {bad}", file=sys.stderr)
        return PROBLEM if invalid else USAGE
    try:
        if target is not None:
            policies = _policies_of(target)
        else:
            policies = [p for p in registry.policies() if p._born > newest]
    except AttributeError as error:
        print(f"resilient config: {error}", file=sys.stderr)
        return USAGE
    invalid = config.invalid_variables()  # also those no policy made so far reads
    pending, unknown = _unmatched({error.option for error in invalid})
    # (--strict: a family's member not made yet is no orphan: it is made on first use)
    orphans = [later for later in pending if later["family"] is None]
    entries = [_describe(policy) for policy in policies]
    if args.json:
        unknown_json = [{"variable": v, "did_you_mean": s} for v, s in unknown]
        document = {
            "policies": entries,
            "pending": pending,
            "unknown": unknown_json,
            "invalid": _invalid(invalid),
        }
        print(_json(document))
    else:
        if not entries:
            print(f"{args.target} made no named policy as it imported.")
        for entry in entries:
            title = config.TITLES.get(entry["kind"], entry["kind"])
            print(f"{title} {entry['name']!r}")
            width = max(len(option) for option in entry["options"]) if entry["options"] else 0
            for option, shown in entry["options"].items():
                value = _show(shown["value"])
                print(f"  {option:<{width}}  {value:<24}  ({shown['source']})")
            if not entry["enabled"]:
                print("  switched off by RESILIENT_ENABLED")
        for later in pending:
            kind = later["kind"]
            hint = f"; did you mean {later['did_you_mean']}?" if later["did_you_mean"] else ""
            if later["family"] is not None:
                print(
                    f"{later['variable']}={later['text']}: applies to the {kind} of one"
                    f" of {later['family']!r}'s members (a transport's host, spelt"
                    f" {later['name']!r} here) when it is made"
                )
                continue
            print(
                f"{later['variable']}={later['text']}: applies to the {kind} named"
                f" {later['name']!r} when one is made (no live {kind} has that name yet{hint})"
            )
        for var, suggestion in unknown:
            hint = f"; did you mean {suggestion}?" if suggestion else ""
            print(f"warning: {var} matches no option of any policy{hint}", file=sys.stderr)
        for bad in invalid:
            print(f"error: {bad}", file=sys.stderr)
        if args.strict and orphans:
            print(
                f"error: --strict: {len(orphans)} variable(s) name no live policy", file=sys.stderr
            )
    check = args.check or args.strict
    failed = invalid or (check and unknown) or (args.strict and orphans)
    return PROBLEM if failed else OK


def _unmatched(bad: set[str]) -> tuple[list[dict[str, Any]], list[tuple[str, str | None]]]:
    """The set variables no live policy reads, in two lists: those that name a kind and
    an option that exist (valid: a policy made later, by a factory say, reads them; the
    bad ones are left to the errors), and the unknown ones with a "did you mean"."""
    live = registry._live()
    known = config.known_variables((p.KIND, n) for p in live for n in p._read_names())
    # Families whose members are made later (a transport's per-host breakers): their
    # variables name a member, RESILIENT_<FAMILY>_<HOST>_<KIND>_*, before it exists.
    families = {(p.KIND, config.env_name(f) + "_", f) for p in live for f in p._family}
    pending: list[dict[str, Any]] = []
    unknown: list[tuple[str, str | None]] = []
    for var, suggestion in config.unknown_variables(known):
        parts = config.parts_of(var)
        if parts is None:
            unknown.append((var, suggestion))
        elif var not in bad:
            text = os.environ[var]
            family = next(
                (
                    name
                    for kind, prefix, name in families
                    if kind == parts.kind and parts.name.startswith(prefix)
                ),
                None,
            )
            pending.append(
                {
                    "variable": var,
                    "text": text,
                    "value": parts.option.from_text(text),
                    "kind": parts.kind,
                    "option": parts.option.name,
                    "name": parts.name.lower(),
                    "family": family,  # the live family it names a member of, if any
                    "did_you_mean": suggestion,  # a live policy's variable, if one is close
                }
            )
    return pending, unknown


def _lookup(module: Any, attr: str) -> Any:
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _policies_of(target: Any) -> list[Configured]:
    """The policies behind an attribute: a policy, or a Pipeline's."""
    if isinstance(target, Configured):
        return [target]
    policies = getattr(target, "policies", None)
    if isinstance(policies, tuple):
        return [p for p in policies if isinstance(p, Configured)]
    raise AttributeError(f"{target!r} is not a resilient policy or Pipeline")


def _describe(policy: Configured) -> dict[str, Any]:
    settings = policy.settings
    options = {}
    for option in (*policy.OPTIONS, *policy.ENV_OPTIONS):
        value = settings.values[option.name]
        source = settings.sources[option.name]
        if source.startswith(config.PREFIX):
            source = f"{source}={settings.texts[option.name]}"
        options[option.name] = {"value": value, "source": source}
    return {
        "kind": policy.KIND,
        "name": policy.name,
        "enabled": settings.enabled,
        "options": options,
    }


def _show(value: Any) -> str:
    """A value as text: exception types as written, a function or class by import path."""
    if isinstance(value, tuple):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    qualname = getattr(value, "__qualname__", None)
    if qualname is None:
        return repr(value)
    module = getattr(value, "__module__", None)
    return str(qualname) if module in (None, "builtins") else f"{module}:{qualname}"


def _json(document: dict[str, Any]) -> str:
    """Numbers, booleans and None as JSON's own (seconds as numbers), tuples as lists, and
    only what has no JSON form (an exception filter, a function) as the text shows it."""
    return json.dumps(document, indent=2, default=_show)


def _invalid(errors: list[ConfigError]) -> list[dict[str, Any]]:
    return [
        {"variable": e.option, "value": e.value, "expected": e.expected, "policy": e.owner}
        for e in errors
    ]


def _report_invalid(args: argparse.Namespace, error: ConfigError) -> int:
    error = ConfigError.combine([error, *config.invalid_variables()])  # every bad one
    if args.json:
        invalid = _invalid(list(error.errors))
        print(_json({"policies": [], "pending": [], "unknown": [], "invalid": invalid}))
    else:
        print(f"resilient config: invalid configuration\n{error}", file=sys.stderr)
    return PROBLEM
