"""A Griffe extension that renders hpa-tf's docstrings, written for ``help()`` and doctest, as
Markdown for mkdocstrings: doctest examples become ``pycon`` code blocks (Markdown would make
``>>>`` a nested quote), and Sphinx roles (``:func:`load_model```) become links to the API page of
the object they name. A role naming nothing is a warning, so ``mkdocs build --strict`` fails on it.
A name a package re-exports (``hpa_tf.models.load_model``) is documented once, where it is defined.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([\w.]+)`")
DOCTEST_FLAG = re.compile(r"\s*#\s*doctest:.*$")
PACKAGES = ("hpa_tf.", "tfrecord_builder.")  # the objects documented on this site
logger = griffe.get_logger(__name__)


def fence_doctests(text: str) -> str:
    """Put every run of doctest lines (a ``>>>`` line up to the next blank line) in a pycon block."""
    out: list[str] = []
    in_example = False
    for line in text.split("\n"):
        if line.startswith(">>>") and not in_example:
            out += ["", "```pycon"]
            in_example = True
        elif in_example and not line.strip():
            out += ["```"]
            in_example = False
        out.append(DOCTEST_FLAG.sub("", line) if in_example else line)
    return "\n".join(out + (["```"] if in_example else []))


def target_of(obj: griffe.Object, name: str) -> str:
    """The path where the object ``name`` names in ``obj``'s docstring is defined (``name`` is
    absolute, relative to the package with a leading dot, or a name in scope); a
    NameResolutionError if it names nothing."""
    if name.startswith("."):
        package = obj.module if obj.module.is_init_module else obj.module.parent
        path = f"{package.path}{name}"
    elif f"{name}.".startswith(PACKAGES):
        path = name
    else:
        head, _, rest = name.partition(".")
        path = obj.resolve(head) + (f".{rest}" if rest else "")
    try:
        return obj.modules_collection[path].canonical_path
    except (KeyError, griffe.AliasResolutionError):
        return path  # not loaded here: autorefs says so if no page has it


def link_roles(obj: griffe.Object, text: str) -> str:
    """Sphinx roles as mkdocstrings cross-references; ``~`` shows the last part of the name only."""

    def link(match: re.Match) -> str:
        short, name = match.groups()
        shown = name.rsplit(".", 1)[-1] if short else name.lstrip(".")
        try:
            target = target_of(obj, name)
        except griffe.NameResolutionError:
            logger.warning(f"{obj.path}: the docstring names {name!r}, which does not exist there")
            return f"`{shown}`"
        # Only hpa-tf's own objects have pages here (the build is offline: no other project's inventory).
        return f"[`{shown}`][{target}]" if f"{target}.".startswith(PACKAGES) else f"`{shown}`"

    return ROLE.sub(link, text)


def own_objects(obj: griffe.Object):
    """``obj`` and every object defined inside it (not the names it imports)."""
    yield obj
    for member in list(obj.members.values()):
        if not member.is_alias:
            yield from own_objects(member)


class RstDocstrings(griffe.Extension):
    """The extension mkdocs.yml loads: runs once a package's whole tree is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        objects = list(own_objects(pkg))
        for obj in objects:  # while every name still resolves
            if obj.docstring:
                obj.docstring.value = link_roles(obj, fence_doctests(obj.docstring.value))
        for obj in objects:
            for name, member in list(obj.members.items()):
                if member.is_alias and f"{member.target_path}.".startswith(PACKAGES):
                    del obj.members[name]
