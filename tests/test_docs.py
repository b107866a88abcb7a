"""The documentation: the site builds with warnings as errors, and the examples in it work.

- Every ```python block of docs/*.md runs: a page's blocks in order, in one namespace, in a temporary
  folder that holds the tiny inputs the page uses (``PAGE_INPUTS``). A block written as a doctest
  (``>>>``) must print what it shows.
- Every ```bash block of docs/*.md and README.md is checked, not run (most need real data or a
  TPU): each command's arguments must parse with that command's own parser (options, choices,
  required arguments, and the keys and values of --config/--set); a make target and its variables
  must be in the Makefile, a pip extra in pyproject.toml, a test file in tests/.
- A block that cannot run here is marked ``<!-- skip: next "why" -->`` above it; skips are few
  (``MAX_SKIPS``) and each says why.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import unittest
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]
MAX_SKIPS = 3
LANGUAGES = {"python", "bash", "text", "yaml"}  # every fence names one: nothing goes unchecked by accident
PAGE_INPUTS = {
    "getting-started.md": ("synth",),
    "reading-data.md": ("synth",),
    "segmentation.md": ("synth", "official"),
    "tfrecords.md": ("records",),
    "training.md": ("records",),
    "prediction.md": ("synth", "models"),
    "metric.md": ("synth",),
    "faults.md": ("records",),
}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- the bash blocks ------------------------------------------------------------------------------

class _Parsed(Exception):
    """Raised by the patched parse_args: the arguments parsed, and nothing ran."""


def parse_only(main, argv: list[str]) -> argparse.Namespace:
    """The namespace ``main(argv)`` parses its arguments into, without running the command."""
    original = argparse.ArgumentParser.parse_args

    def parse(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        argparse.ArgumentParser.parse_args = parse
        try:
            main(argv)
        except _Parsed as parsed:
            return parsed.args[0]
        except SystemExit:
            raise AssertionError(err.getvalue().strip().splitlines()[-1]) from None
        finally:
            argparse.ArgumentParser.parse_args = original
    raise AssertionError("the command ran without parsing its arguments")


def variants(words: list[str]) -> list[list[str]]:
    """A synopsis as commands to parse: without its optional ``[...]`` groups, then with each group
    in turn, once per alternative of its ``a|b|c`` choices."""
    base, groups, group = [], [], None
    for word in words:
        if word.startswith("[") and group is None:
            group, word = [], word[1:]
        if group is None:
            base.append(word)
            continue
        closed = word.endswith("]")
        group.append(word.rstrip("]") if closed else word)
        if closed:
            groups.append(group)
            group = None
    out = [base]
    for group in groups:
        choices = [w.split("|") for w in group]
        for i in range(max(len(c) for c in choices)):
            out.append(base + [c[min(i, len(c) - 1)] for c in choices])
    return out


def main_of(words: list[str]) -> tuple[object, list[str]]:
    """The ``main`` function a command line calls, and its arguments."""
    if words[0].startswith("hpa-tf-"):
        module = PYPROJECT["project"]["scripts"][words[0]].split(":")[0]
        return importlib.import_module(module).main, words[1:]
    if words[1] == "-m":
        module = importlib.import_module(words[2])
        if hasattr(module, "__path__"):
            module = importlib.import_module(f"{words[2]}.__main__")
        return module.main, words[3:]
    script = ROOT / words[1]
    assert script.is_file(), f"{words[1]}: no such script in the repository"
    module = re.search(r"from (\S+) import main", script.read_text()).group(1)
    return importlib.import_module(module).main, words[2:]


def check_python_command(words: list[str]) -> None:
    from hpa_tf.config import load_config

    main, argv = main_of(words)
    for args in variants(argv):
        try:
            parsed = parse_only(main, args)
            if getattr(parsed, "set", None) or getattr(parsed, "config", None):
                load_config(getattr(parsed, "config", None), getattr(parsed, "set", []))  # keys, types, ranges
        except Exception as err:
            variant = f" (its variant with `{shlex.join(args)}`)" if args != argv else ""
            raise AssertionError(f"`{shlex.join(words)}`{variant}: {err}") from None


def check_make(words: list[str]) -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    variables = set(re.findall(r"^(\w+) \?=", makefile, re.M))
    for word in words[1:]:
        name = word.split("=", 1)[0]
        assert (name in variables) if "=" in word else (name in targets), f"`{shlex.join(words)}`: no {name} in the Makefile"


def check_pip(words: list[str]) -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    for word in words:
        asked = re.fullmatch(r"(?:hpa-tf|\.)\[([\w,-]+)\]", word)
        missing = set(asked.group(1).split(",")) - extras if asked else set()
        assert not missing, f"`{shlex.join(words)}`: pyproject.toml has no extra {', '.join(sorted(missing))}"


def check_pytest(words: list[str]) -> None:
    for word in words[1:]:
        if word.endswith(".py") or "/" in word:
            assert (ROOT / word.split("::")[0]).exists(), f"`{shlex.join(words)}`: no {word}"


def commands(block: str) -> list[list[str]]:
    """A bash block's commands: continuation lines joined, comments dropped, split at && and ;,
    leading VAR=value assignments dropped."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in words + [";"]:
            if word in ("&&", ";"):
                while command and re.fullmatch(r"\w+=\S*", command[0]):
                    command.pop(0)
                out += [command] if command else []
                command = []
            else:
                command.append(word.rstrip(";"))
    return out


def check_bash_block(example) -> None:
    """The evaluator of ```bash blocks (run in the repository root, as the docs' commands are)."""
    with contextlib.chdir(ROOT):
        for words in commands(example.parsed):
            program = words[0]
            if program in ("python", "python3") and words[1:3] == ["-m", "pip"]:
                check_pip(words[3:])
            elif program in ("python", "python3") or program.startswith("hpa-tf-"):
                check_python_command(words)
            elif program == "make":
                check_make(words)
            elif program == "pip":
                check_pip(words)
            elif program == "pytest":
                check_pytest(words)
            elif program == "kaggle":  # the Kaggle CLI (not installed here): its dataset commands only
                assert words[1:2] == ["datasets"] and words[2:3] in (["init"], ["create"], ["version"]) \
                    and "-p" in words, f"`{shlex.join(words)}`: not a Kaggle CLI dataset command with -p FOLDER"
            elif program not in ("cd", "git"):
                raise AssertionError(f"`{shlex.join(words)}`: tests/test_docs.py does not know how to check {program}")


SYBIL = Sybil(parsers=[
    PythonCodeBlockParser(),
    CodeBlockParser(language="bash", evaluator=check_bash_block),
    SkipParser(),
])


# --- the inputs a page's examples use ---------------------------------------------------------------

def _tiny_models(request, folder: Path) -> None:
    import keras

    from hpa_tf.models import cell_bag_model, image_classifier

    keras.utils.set_random_seed(0)
    for name, model in (("image", image_classifier("small_cnn", 64)), ("cells", cell_bag_model("small_cnn", 32))):
        (folder / name).mkdir()
        model.save(folder / name / "best.keras")


INPUTS = {
    "synth": lambda request, folder: shutil.copytree(request.getfixturevalue("synth_dir"), folder / "synth"),
    "records": lambda request, folder: shutil.copytree(request.getfixturevalue("built_records"), folder / "records"),
    "models": _tiny_models,
    "official": lambda request, folder: shutil.copy(ROOT / "tests/data/official_segmenter/tiny_dpn_unet_legacy.pth",
                                                    folder / "dpn_unet_cell_3ch_v1.pth"),
}


# --- the tests ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_examples_of_a_page_work(page, request, tmp_path, monkeypatch):
    for name in PAGE_INPUTS.get(page.name, ()):
        INPUTS[name](request, tmp_path)
    monkeypatch.chdir(tmp_path)
    for example in SYBIL.parse(page).examples():
        try:
            example.evaluate()
        except unittest.SkipTest:
            continue
        except Exception as err:
            raise AssertionError(f"{page.relative_to(ROOT)}, line {example.line}: {type(err).__name__}: {err}") from err


def test_skips_are_few_and_say_why():
    skips = {p.name: re.findall(r"<!-- skip: (.*?)-->", p.read_text()) for p in PAGES}
    for page, found in skips.items():
        for skip in found:
            assert re.fullmatch(r'next "[^"]{10,}" ', skip), f"{page}: `skip: {skip}` must be `skip: next \"why\"`"
    assert sum(map(len, skips.values())) <= MAX_SKIPS, skips


def test_every_code_block_names_a_checked_language():
    for page in PAGES:
        fences = re.findall(r"^ *```(.*)$", page.read_text(), re.M)[::2]  # opening fences
        unknown = sorted(set(fences) - LANGUAGES)
        assert not unknown, f"{page.name}: code blocks in {unknown}; use one of {sorted(LANGUAGES)} (text is not run)"


def test_the_tests_the_docs_name_exist():
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    for page in PAGES:
        for name in sorted(set(re.findall(r"`(test_\w+)`", page.read_text()))):
            assert f"def {name}(" in tests, f"{page.name} names {name}, which is not a test in tests/"


def test_the_readme_links_resolve_and_its_results_are_the_docs():
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#\s]+)", readme):
        if not re.match(r"\w+://", target):
            assert (ROOT / target).exists(), f"README.md links {target}, which is not in the repository"
    results = readme.split("\n## Results", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in results.splitlines() if line.startswith("|")]
    assert rows and not [r for r in rows if r not in (DOCS / "results.md").read_text()], "README tables differ from docs/results.md"


def test_docstrings_become_markdown_with_links_to_where_objects_are_defined(caplog):
    import griffe

    spec = importlib.util.spec_from_file_location("rst_docstrings", DOCS / "_ext" / "rst_docstrings.py")
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    hpa_tf = griffe.load("hpa_tf", search_paths=[str(ROOT)], extensions=griffe.load_extensions(ext.RstDocstrings))
    assert "[`cell_labels`][hpa_tf.data.cell_labels]" in hpa_tf["pseudo"].docstring.value
    assert "```pycon\n>>> import numpy as np" in hpa_tf["segmentation"].docstring.value
    # A re-export is documented where it is defined, and a link to it goes there.
    assert "image_classifier" not in hpa_tf["models"].members
    assert "[`image_classifier`][hpa_tf.models.classifier.image_classifier]" in hpa_tf["models.cam.CamScorer"].docstring.value
    with caplog.at_level("WARNING"):
        assert ext.link_roles(hpa_tf["viz"], ":func:`no_such_function`") == "`no_such_function`"
    assert "names 'no_such_function', which does not exist there" in caplog.text


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-5000:]
    page = (tmp_path / "site" / "api" / "inference" / "index.html").read_text()
    assert 'id="hpa_tf.inference.predictor.Predictor.predict_image"' in page  # the docstrings are rendered
