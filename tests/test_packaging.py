"""What pyproject.toml declares matches what the package needs.

The runtime dependencies are exactly the third-party modules resilient/ imports. Imports
are read from the source (every ``import`` statement, wherever it stands), so the test
walks the package that is imported: the source tree from an editable install, the
installed files from a wheel.

Optional modules are imported inside functions only, never by ``import resilient``:

- tenacity, when a tenacity strategy (or a plain ``stop`` callable, which is handed
  tenacity's RetryCallState) is given to Retry; the ``tenacity`` extra installs it.
- trio, only from code that runs inside a trio run: the program brought trio, so no extra.

Integration modules are the exception: a public module named after its library
(``resilient/starlette.py``, ``resilient/httpx.py``, ``resilient/prometheus.py``) imports
that library eagerly, since only ``import resilient.starlette`` loads it. Each has an extra
of the same name, and
nothing else in resilient/ imports the library eagerly (tests/test_imports.py checks that
``import resilient`` loads none of them).

``sys.modules.get("x")`` and ``sys.modules["x"]`` are not imports: they find a module only
if the program already imported it, so they need no dependency. Each name looked up this
way must still be a runtime dependency or listed in OPTIONAL, so a new lookup is noticed.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import resilient

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(resilient.__file__).parent

#: Optional third-party modules and the extra that installs each (None: none needed).
OPTIONAL: dict[str, str | None] = {"tenacity": "tenacity", "trio": None}

#: Integration modules (``resilient/<name>.py``, with an extra called <name>) and the one
#: library each imports eagerly; one whose file does not exist yet is skipped.
INTEGRATIONS: dict[str, str] = {
    "httpx": "httpx",
    "starlette": "starlette",
    "otel": "opentelemetry",
    "prometheus": "prometheus_client",
    "redis": "redis",
}

#: The pytest plugin: it imports pytest eagerly, and only pytest loads it (through the
#: ``pytest11`` entry point), so pytest is no dependency and needs no extra.
PLUGIN = "pytest_plugin"

#: The distribution (as an import name) that installs a library, where the names differ.
DISTRIBUTIONS: dict[str, str] = {"opentelemetry": "opentelemetry_api"}


def integrations() -> dict[str, str]:
    """The integration modules present in the package, and their libraries."""
    return {name: lib for name, lib in INTEGRATIONS.items() if (PACKAGE / f"{name}.py").exists()}


def pyproject() -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
        tomllib = pytest.importorskip("tomli")
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)  # type: ignore[no-any-return]


def requirement_names(requirements: list[str]) -> set[str]:
    """The distribution names (as import names) in PEP 508 requirement strings."""
    names = set()
    for requirement in requirements:
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        assert match, requirement
        names.add(match.group().lower().replace("-", "_"))
    return names


def third_party(name: str) -> bool:
    return name not in sys.stdlib_module_names and name != "resilient"


class Imports(ast.NodeVisitor):
    """Third-party top-level modules: imported at module level (``eager``), inside a
    function (``lazy``), or looked up in sys.modules by a literal name (``looked_up``)."""

    def __init__(self) -> None:
        self.eager: set[str] = set()
        self.lazy: set[str] = set()
        self.looked_up: set[str] = set()
        self._depth = 0

    def _add(self, module: str) -> None:
        name = module.partition(".")[0]
        if third_party(name):
            (self.lazy if self._depth else self.eager).add(name)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module is not None:
            self._add(node.module)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        # Imports under `if TYPE_CHECKING:` never run.
        if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            self.generic_visit(node)
        else:
            for child in node.orelse:
                self.visit(child)

    def _literal_lookup(self, node: ast.expr, key: ast.expr) -> None:
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "modules"
            and isinstance(node.value, ast.Name)
            and node.value.id == "sys"
            and isinstance(key, ast.Constant)
            and isinstance(key.value, str)
        ):
            name = key.value.partition(".")[0]
            if third_party(name):
                self.looked_up.add(name)

    def visit_Call(self, node: ast.Call) -> None:
        function = node.func
        if isinstance(function, ast.Attribute) and function.attr == "get" and node.args:
            self._literal_lookup(function.value, node.args[0])
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self._literal_lookup(node.value, node.slice)
        self.generic_visit(node)


def file_imports(path: Path) -> Imports:
    found = Imports()
    found.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return found


@pytest.fixture(scope="module")
def imports_by_file() -> dict[Path, Imports]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert PACKAGE / "_core" / "state" / "window.py" in files
    return {path: file_imports(path) for path in files}


@pytest.fixture(scope="module")
def imports(imports_by_file: dict[Path, Imports]) -> Imports:
    """What the package imports, less what its integration modules import eagerly."""
    integration_files = {PACKAGE / f"{name}.py" for name in [*integrations(), PLUGIN]}
    found = Imports()
    for path, each in imports_by_file.items():
        if path not in integration_files:
            found.eager |= each.eager
        found.lazy |= each.lazy
        found.looked_up |= each.looked_up
    return found


def test_the_runtime_dependencies_are_what_the_package_imports(imports: Imports) -> None:
    declared = requirement_names(pyproject()["project"]["dependencies"])
    libraries = set(integrations().values())  # the integration test holds their imports
    assert declared == (imports.eager | imports.lazy) - OPTIONAL.keys() - libraries


def test_integration_modules_import_their_library_and_have_its_extra(
    imports_by_file: dict[Path, Imports], imports: Imports
) -> None:
    """``resilient/<name>.py`` imports <lib> (and the runtime dependencies) eagerly, the
    extra <name> installs <lib>, and no other module imports <lib> eagerly."""
    found = integrations()
    assert "starlette" in found  # the rule is exercised by one at least
    declared = requirement_names(pyproject()["project"]["dependencies"])
    extras = pyproject()["project"]["optional-dependencies"]
    for name, lib in found.items():
        eager = imports_by_file[PACKAGE / f"{name}.py"].eager
        assert lib in eager, f"resilient/{name}.py does not import {lib}"
        assert eager - declared <= {lib}, f"resilient/{name}.py imports another library"
        dist = DISTRIBUTIONS.get(lib, lib)
        assert dist in requirement_names(extras.get(name, [])), f"no extra {name!r} with {dist}"
        assert f"resilient-toolkit[{name}]" in extras["test"], "the tests need it"
        assert dist not in declared, f"{dist} is an extra, not a runtime dependency"
        assert lib not in imports.eager, f"a module other than resilient/{name}.py imports {lib}"


def test_the_pytest_plugin_is_an_entry_point_and_alone_imports_pytest(
    imports_by_file: dict[Path, Imports],
) -> None:
    declared = requirement_names(pyproject()["project"]["dependencies"])
    plugin = imports_by_file[PACKAGE / f"{PLUGIN}.py"]
    assert plugin.eager - declared == {"pytest"}
    others = [
        p for p, each in imports_by_file.items() if p.stem != PLUGIN and "pytest" in each.eager
    ]
    assert others == []
    entry_points = pyproject()["project"]["entry-points"]["pytest11"]
    assert entry_points == {"resilient": f"resilient.{PLUGIN}"}


def test_optional_modules_are_imported_lazily_and_only_they_are_optional(
    imports: Imports,
) -> None:
    assert not imports.eager & OPTIONAL.keys(), "`import resilient` must not need these"
    assert OPTIONAL.keys() <= imports.lazy | imports.looked_up, "stale OPTIONAL entries"
    declared = requirement_names(pyproject()["project"]["dependencies"])
    assert imports.looked_up <= declared | OPTIONAL.keys(), "a lookup of an unknown module"


def test_each_optional_module_has_its_extra_and_the_tests_install_them() -> None:
    extras = pyproject()["project"]["optional-dependencies"]
    for module, extra in OPTIONAL.items():
        if extra is not None:
            assert module in requirement_names(extras[extra])
    assert extras["test"][0] == "resilient-toolkit[tenacity]"  # tests and docs use it
    assert "resilient-toolkit[test]" in extras["dev"]


def test_the_docs_tell_tenacity_users_which_extra_to_install() -> None:
    command = 'pip install "resilient-toolkit[tenacity]"'
    assert command in (ROOT / "docs" / "retry.md").read_text()
    assert command in (ROOT / "README.md").read_text()


def test_the_classifiers_name_each_python_from_the_oldest_supported() -> None:
    project = pyproject()["project"]
    oldest = re.fullmatch(r">=3\.(\d+)", project["requires-python"])
    assert oldest
    prefix = "Programming Language :: Python :: 3."
    minors = [int(c.removeprefix(prefix)) for c in project["classifiers"] if c.startswith(prefix)]
    assert minors == list(range(int(oldest.group(1)), 14))
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]  # SPDX only


def test_resilient_works_without_tenacity_and_trio() -> None:
    """A fresh interpreter that cannot import either: resilient imports and retries, and a
    plain ``stop`` callable (handed tenacity's RetryCallState) is refused at once."""
    script = """
import sys
sys.modules["tenacity"] = sys.modules["trio"] = None  # as if not installed
import resilient
from resilient import ConfigError, Retry
from resilient.testing import ManualClock

calls = []
def flaky():
    calls.append(1)
    if len(calls) < 2:
        raise ConnectionError
    return "ok"

assert Retry(3, wait=1, clock=ManualClock()).call(flaky) == "ok"
try:
    Retry(3, stop=lambda state: False)
except ConfigError as exc:
    print(exc)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "stop" in out.stdout
    assert "tenacity" in out.stdout
