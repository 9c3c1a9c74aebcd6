"""
Which modules may import which: only the C{*_tap} modules wire rooms together, and the health
check loads no plugin (nor web3) to find the endpoint it asks.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import ethtwisted

PACKAGE = Path(ethtwisted.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """
    The ethtwisted modules C{path} imports, by their full names.
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.startswith("ethtwisted.")}


def module_name(path: Path) -> str:
    """
    The full name of the ethtwisted module at C{path}.
    """
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycles() -> None:
    """
    No ethtwisted module imports, even inside a function or only for type checking, a module
    that imports it back (directly or through others): each room stands on the ones below it.
    An imported name that is not a module counts as its module's import.
    """
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path): path for path in paths}
    graph = {
        name: {n for n in imported_modules(path) if n in modules and n != name}
        for name, path in modules.items()
    }
    assert graph["ethtwisted.server.factory"] >= {"ethtwisted.server.protocol"}
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from None


def test_only_tap_modules_import_tap_modules() -> None:
    """
    No module but a C{*_tap} module imports a C{*_tap} module.
    """
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 10
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(
            n for n in imported_modules(path) if n.endswith("_tap")
        )
        for path in modules
        if not path.name.endswith("_tap.py")
    }
    assert {path: taps for path, taps in offenders.items() if taps} == {}


def test_product_code_uses_no_test_helpers() -> None:
    """
    No module of the product imports Twisted's test helpers (C{MemoryReactor} and the like in
    C{twisted.internet.testing}, C{twisted.test}, C{twisted.web.test}, C{twisted.trial}).
    """
    helpers = ("twisted.internet.testing", "twisted.test", "twisted.web.test", "twisted.trial")
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        used = sorted(n for n in names if n.startswith(helpers))
        if used:
            offenders[str(path.relative_to(PACKAGE))] = used
    assert offenders == {}


def test_no_test_module_imports_another() -> None:
    """
    No module of tests/ imports a test module (C{tests.test_*}, or a name out of one): what
    several test modules share lives in tests/helpers.py, the modules beside it and the
    fixtures of tests/conftest.py, so changing one test module cannot break another.
    """
    tests = Path(__file__).parent
    paths = sorted(tests.rglob("*.py"))
    assert len(paths) > 10
    offenders = {}
    for path in paths:
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                module = ".".join(filter(None, ["tests" if node.level else "", node.module]))
                names.add(module)
                names.update(f"{module}.{alias.name}" for alias in node.names)
        imported = sorted(n for n in names if n.startswith("tests.test_"))
        if imported:
            offenders[str(path.relative_to(tests))] = imported
    assert offenders == {}


def test_every_logger_passes_the_verbose_filter() -> None:
    """
    Every module logs through L{ethtwisted.logs.Logger} (whose events pass the one filter that
    C{--verbose} sets), none through Twisted's own L{Logger} straight to the global publisher.
    """
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "logs.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module == "twisted.logger"
                and any(alias.name == "Logger" for alias in node.names)
            ):
                offenders.append(str(path.relative_to(PACKAGE)))
    assert offenders == []


def test_health_check_loads_no_plugin() -> None:
    """
    Finding the default endpoint of eth-demo and eth-stats imports neither their tap modules
    nor web3: the check runs every few seconds in the container.
    """
    script = (
        "import sys\n"
        "from ethtwisted import healthcheck\n"
        "urls = [healthcheck.health_url({}, (name, [])) for name in ('eth-demo', 'eth-stats')]\n"
        "loaded = [m for m in sys.modules if m.endswith('_tap') or m.split('.')[0] == 'web3']\n"
        "print(urls, sorted(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-P", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    urls = ["http://127.0.0.1:8080/healthz"] * 2
    assert result.stdout.strip() == f"{urls} []"


def test_moved_code_logs_under_its_old_tag() -> None:
    """
    Start-up messages and the demo's still read C{[ethtwisted.tap#level]} and
    C{[ethtwisted.demo_tap#level]} in twistd's log, as before they moved to their own modules.
    """
    from ethtwisted import demo, startup

    assert startup.log.namespace == "ethtwisted.tap"
    assert demo.log.namespace == "ethtwisted.demo_tap"


def test_only_tap_modules_add_listeners_to_other_objects() -> None:
    """
    Parts are connected where they are built: no module but a C{*_tap} module adds to another
    object's listener or observer list (a constructor that registers itself with a part it is
    given hides a connection from whoever reads the wiring); an object may fill its own.
    """
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name.endswith("_tap.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("append", "extend", "insert")
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr.endswith(("listeners", "observers"))
            ):
                continue
            owner = node.func.value.value
            if not (isinstance(owner, ast.Name) and owner.id == "self"):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {ast.unparse(node)}")
    assert offenders == []


def test_every_list_of_callables_is_named_listeners() -> None:
    """
    Every attribute holding a list of callables told of an event is named C{*_listeners}, so
    that one kind of thing has one name (C{observers} is kept for objects of an interface).
    """
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Attribute)
                and ast.unparse(node.annotation).startswith("list[Callable")
            ):
                names.append(f"{path.relative_to(PACKAGE)}: {node.target.attr}")
    assert len(names) > 10
    assert [name for name in names if not name.endswith("_listeners")] == []
