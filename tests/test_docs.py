"""The documentation names what exists: every file path and module named in README.md and
docs/*.md is in the repository, and the README's command examples parse."""

import glob
import importlib
import os
import re
import shlex

import pytest
from click.testing import CliRunner

from dr_saliency.app.cli import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.relpath(p, REPO)
                               for p in glob.glob(os.path.join(REPO, "docs", "*.md")))

# A repository path, in `code` or a link: starts with one of the repository's own top-level
# folders (outputs such as demo_out/ or RUN/model.h5 are placeholders, not paths of it).
_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_PATH = re.compile(r"(?<![\w/.<>-])((?:dr_saliency|docs|data|bench|tests|bin)/[\w./-]*[\w/])")
_LINK = re.compile(r"\]\(([^)#\s]+)")
_MODULE = re.compile(r"(?<![\w/.])(dr_saliency(?:\.\w+)+)(?![\w/])")


def _read(page):
    with open(os.path.join(REPO, page), encoding="utf-8") as f:
        return f.read()


def _named_paths():
    for page in PAGES:
        text = _read(page)
        for code in _CODE.finditer(text):
            for match in _PATH.finditer(code.group(1)):
                yield page, match.group(1), match.group(1)
        for match in _LINK.finditer(text):
            target = match.group(1)
            if "://" in target or target.startswith("mailto:"):
                continue
            yield page, target, os.path.normpath(os.path.join(os.path.dirname(page), target))


def _resolves(dotted):
    """A module, or an attribute of a module (``dr_saliency.core.maps.scored_maps``)."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for name in parts[k:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_every_path_named_in_the_docs_exists():
    missing = sorted({f"{page}: {shown}" for page, shown, path in _named_paths()
                      if not os.path.exists(os.path.join(REPO, path.rstrip("/")))})
    assert not missing, "\n".join(missing)


#: Installed only: setup.py maps the repository's data/ folder to this package.
_INSTALLED_ONLY = {"dr_saliency.bundled"}


def test_every_module_named_in_the_docs_exists():
    missing = sorted({f"{page}: {m.group(1)}" for page in PAGES + ["setup.py"]
                      for m in _MODULE.finditer(_read(page))
                      if m.group(1) not in _INSTALLED_ONLY and not _resolves(m.group(1))})
    assert not missing, "\n".join(missing)


def _readme_commands():
    """Each ``dr-saliency COMMAND ...`` line of the README's code blocks, as argument lists
    (option placeholders such as ``PHOTO_OR_FOLDER...`` kept: only names are checked)."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", _read("README.md"), re.S)
    for block in blocks:
        for line in block.splitlines():
            line = line.split("#")[0]
            found = re.search(r"dr-saliency (\w[\w-]*)(.*)", line)
            if found:
                words = shlex.split(found.group(2).split("  ")[0].replace("[", " ")
                                    .replace("]", " ").replace("|", " "))
                yield found.group(1), words


def test_the_readme_command_examples_parse():
    seen = list(_readme_commands())
    assert len({name for name, _ in seen}) >= 10
    runner = CliRunner()
    for name, words in seen:
        assert name in cli.commands, f"README: dr-saliency {name}: no such command"
        help_result = runner.invoke(cli, [name, "--help"])
        assert help_result.exit_code == 0, (name, help_result.output)
        options = {o for p in cli.commands[name].params for o in (*p.opts, *p.secondary_opts)}
        for word in words:
            if word.startswith("--"):
                assert word.split("=")[0] in options, f"README: dr-saliency {name} {word}"


def test_history_words_only_in_the_history_page():
    """"Step N", "generator v2" and the former design document are explained in
    docs/history.md; the other pages say what is."""
    words = re.compile(r"\bStep \d+\b|\bgenerator v\d\b|DESIGN\.md")
    found = [f"{page}: {m.group(0)}" for page in PAGES if page != "docs/history.md"
             for m in words.finditer(_read(page))]
    assert not found, "\n".join(found)
    assert "(history.md)" in _read("docs/README.md")
