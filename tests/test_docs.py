"""
The README's option tables and links follow the code.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from twisted.python import usage

from ethtwisted.options import env_name

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def long_options(options: usage.Options) -> list[str]:
    names = {name.rstrip("=") for name in options.longOpt}
    names -= {"help", "version"}
    return sorted(n for n in names if options.synonyms.get(n, n) == n)


def readme_section(command: str) -> str:
    start = README.index(f"### `twistd {command}`")
    end = README.find("\n#", start + 1)
    return README[start:end]


@pytest.mark.parametrize(
    ("module", "command"),
    [
        ("ethtwisted.server_tap", "eth-server"),
        ("ethtwisted.client_tap", "eth-client"),
        ("ethtwisted.stats_tap", "eth-stats"),
        ("ethtwisted.demo_tap", "eth-demo"),
    ],
)
def test_every_option_is_in_the_readme(module: str, command: str) -> None:
    """
    Each option of each plugin has a row in its README table, with its environment variable;
    and the table has no row for an option that does not exist.
    """
    options = importlib.import_module(module).Options()
    section = readme_section(command)
    documented = set(re.findall(r"^\| `--([a-z-]+)", section, re.MULTILINE))
    for name in long_options(options):
        assert name in documented, f"--{name} of {command} is not in the README"
        assert f"`{env_name(name)}`" in section
    assert documented <= set(long_options(options))


def test_links_point_at_files() -> None:
    """
    Every relative link of the README and docs/ names a file of the repository.
    """
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


def test_where_things_are_lists_every_module() -> None:
    """
    docs/where-things-are.md has a line for every module under ethtwisted/, and names no
    module that does not exist.
    """
    root = Path(__file__).parent.parent
    text = (root / "docs" / "where-things-are.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"`(ethtwisted/[\w/]+\.py)`", text))
    modules = {str(p.relative_to(root)) for p in (root / "ethtwisted").rglob("*.py")}
    assert listed == modules


@pytest.mark.parametrize("module", ["server_tap", "client_tap", "stats_tap", "demo_tap"])
def test_the_readme_says_what_each_option_says(module: str) -> None:
    """
    Each option's row in the README gives its meaning in the words of its own help text
    (the README adds only code marks), so that the two never tell a user different things.
    """
    options = importlib.import_module(f"ethtwisted.{module}").Options()
    command = f"eth-{module.removesuffix('_tap')}"
    rows = dict(re.findall(r"^\| `--([a-z-]+)[^|]*\|[^|]*\|[^|]*\| (.*) \|$",
                           readme_section(command), re.MULTILINE))  # fmt: skip
    helps = {p[0]: p[3] for p in options.optParameters}
    helps.update((f[0], f[2]) for f in options.optFlags)
    for name in long_options(options):
        method = getattr(options, f"opt_{name.replace('-', '_')}", None)
        if name not in helps and method is not None and method.__doc__:
            helps[name] = " ".join(method.__doc__.split())
    assert helps
    for name, text in helps.items():
        assert rows[name].replace("`", "") == text, f"--{name} of {command}"
