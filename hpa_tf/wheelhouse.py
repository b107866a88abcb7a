"""A folder of wheels ("wheelhouse") that installs hpa-tf on a Kaggle notebook with the internet off.

    python -m hpa_tf.wheelhouse wheelhouse/ [--python-version 3.12] [--platform manylinux_2_35_x86_64] \\
        [--source . | --source dist/hpa_tf-0.1.0-py3-none-any.whl] [--ship PACKAGE]... [--models M.keras ...]

It holds hpa-tf's wheel and every dependency a Kaggle image does not bring; upload the folder as a
Kaggle dataset and install from it in the notebook:

    pip install --no-index --find-links /kaggle/input/<dataset> hpa-tf

The Kaggle images already bring TensorFlow, Keras, NumPy, SciPy, pandas, OpenCV, matplotlib,
scikit-learn, tqdm and PyYAML (KAGGLE_BRINGS below): those, and everything they depend on, are not
shipped, and pip keeps the image's copies (it never upgrades an installed package that satisfies a
requirement). The rest is resolved by pip for the Kaggle Python version and platform (wheels only;
on the image's Python, with its packages pinned at the image's versions), so pip needs a package
index here (PyPI, or pip's own settings: PIP_INDEX_URL, PIP_FIND_LINKS, pip.conf). Wheels already
in the folder are replaced; its other files (a dataset-metadata.json) are kept. ``wheelhouse.json``
in the folder records the Python version and platform it was built for, and what to install.

A model saved by a newer Keras than the image's may not load there (a newer Keras writes config keys
an older one rejects). ``--models`` reads the Keras version each ``.keras`` file was saved with; when
the newest is newer than the image's, that Keras is shipped too and ``wheelhouse.json`` lists
``keras==VERSION`` among the requirements to install (pip replaces the image's copy only when asked
for a version): the notebook installs ``install`` from the manifest.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import InvalidVersion, Version

from hpa_tf import fs
from hpa_tf.cli import doc_parser, run

# What both Kaggle images bring, with the versions of the GPU image. Read from Kaggle/docker-python
# (commit 78aaa43, 2026-08): Dockerfile.tmpl builds the GPU image on Colab's runtime image
# release-colab-external-images_20260514 (Python 3.12), whose packages googlecolab/backend-info
# lists (pip-freeze.gpu.txt, commit 0f0755b, 2026-05-14); tpu/requirements.in builds the TPU image
# on python:3.12 with tensorflow-cpu 2.20.0, keras>3, matplotlib, opencv-python-headless, pandas,
# scikit-learn (and transformers, which brings tqdm and PyYAML). scikit-image, tifffile and
# pycocotools are in the GPU image only, iterative-stratification in neither: they are shipped (pip
# leaves a shipped wheel unused where the image has the package).
KAGGLE_BRINGS: dict[str, str] = {
    "tensorflow": "2.20.0",  # tensorflow-cpu on the TPU image
    "tensorflow-cpu": "2.20.0",
    "keras": "3.13.2",
    "numpy": "2.0.2",
    "scipy": "1.16.3",
    "pandas": "2.2.2",
    "opencv-python-headless": "4.13.0.92",
    "matplotlib": "3.10.0",
    "scikit-learn": "1.6.1",
    "tqdm": "4.67.3",
    "pyyaml": "6.0.3",
}
KAGGLE_PYTHON = "3.12"
KAGGLE_PLATFORM = "manylinux_2_35_x86_64"  # Ubuntu 22.04 (glibc 2.35) under the GPU image; the TPU image's is newer
MANIFEST = "wheelhouse.json"
ROOT = Path(__file__).resolve().parents[1]


class WheelhouseError(RuntimeError):
    """A step of building the wheelhouse failed; the message names the step and pip's complaint."""


@dataclass(frozen=True)
class Dist:
    """One resolved distribution: its name, version and requirements (``Requires-Dist`` lines)."""

    name: str
    version: str
    requires: tuple[str, ...] = ()

    @property
    def key(self) -> NormalizedName:
        return canonicalize_name(self.name)


def platform_tags(platform: str) -> list[str]:
    """The platform tags a ``manylinux_2_N_ARCH`` machine accepts (pip takes the list, not the rule).

    >>> platform_tags("manylinux_2_19_x86_64")
    ['manylinux_2_19_x86_64', 'manylinux_2_18_x86_64', 'manylinux_2_17_x86_64', 'manylinux2014_x86_64']
    >>> platform_tags("macosx_14_0_arm64")
    ['macosx_14_0_arm64']
    """
    match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not match:
        return [platform]
    glibc, arch = int(match[1]), match[2]
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc, 16, -1)]
    return tags + ([f"manylinux2014_{arch}"] if glibc >= 17 else [])


def marker_environment(python_version: str, platform: str) -> dict[str, str]:
    """The environment markers of the target machine (CPython on Linux), for ``Requires-Dist`` lines."""
    machine = "x86_64" if platform.endswith("x86_64") else platform.rsplit("_", 1)[-1]
    return {"python_version": python_version, "python_full_version": f"{python_version}.0",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
            "platform_machine": machine}


def _needs(dist: Dist, extras: Iterable[str], env: dict[str, str]) -> list[Requirement]:
    """The requirements of ``dist`` that apply on the target, with ``extras`` asked of it."""
    out = []
    for line in dist.requires:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in ("", *extras)):
            out.append(req)
    return out


def _closure(roots: dict[str, set[str]], dists: dict[str, Dist], env: dict[str, str],
             stop: frozenset[str] | set[str] = frozenset()) -> set[str]:
    """The names reachable from ``roots`` (name -> extras asked) through requirements, not entering ``stop``."""
    seen: dict[str, set[str]] = {}
    todo = [(name, extras) for name, extras in roots.items() if name not in stop]
    while todo:
        name, extras = todo.pop()
        if name not in dists or (name in seen and extras <= seen[name]):
            continue
        seen.setdefault(name, set()).update(extras)
        for req in _needs(dists[name], extras, env):
            dep = canonicalize_name(req.name)
            if dep not in stop:
                todo.append((dep, set(req.extras)))
    return set(seen)


def split(resolved: Iterable[Dist], wanted: str, env: dict[str, str], brought: Iterable[str] = KAGGLE_BRINGS,
          ship: Iterable[str] = ()) -> tuple[list[Dist], list[Dist]]:
    """Split a resolution of ``wanted`` into what to ship and what the image brings: the image's
    packages and all they depend on are there already; everything else ``wanted`` needs is shipped,
    and so is ``ship`` (packages an image no longer brings) where ``wanted`` needs it.

    >>> env = marker_environment("3.12", "manylinux_2_35_x86_64")
    >>> dists = [Dist("hpa-tf", "1", ("numpy", "networkx")), Dist("numpy", "2"), Dist("networkx", "3")]
    >>> [d.name for d in split(dists, "hpa-tf", env, brought=["numpy"])[0]]
    ['hpa-tf', 'networkx']
    """
    dists = {d.key: d for d in resolved}
    shipped_anyway = {canonicalize_name(s) for s in ship}
    roots = {canonicalize_name(b): set() for b in brought if canonicalize_name(b) in dists}
    there = _closure(roots, dists, env, stop=shipped_anyway)
    shipped = _closure({canonicalize_name(wanted): set()}, dists, env, stop=there)
    return sorted((dists[k] for k in shipped), key=lambda d: d.key), sorted((dists[k] for k in there), key=lambda d: d.key)


def conflicts(dists: Iterable[Dist], env: dict[str, str], brought: dict[str, str] = KAGGLE_BRINGS) -> list[str]:
    """The requirements of ``dists`` that the Kaggle image's copy of a package does not meet: pip
    would have to upgrade that package there, which it cannot do without an index.

    >>> conflicts([Dist("x", "1", ("numpy>=2.1",))], marker_environment("3.12", KAGGLE_PLATFORM))
    ['x 1 needs numpy>=2.1; the Kaggle image has numpy 2.0.2']
    """
    out = []
    for dist in dists:
        for req in _needs(dist, (), env):
            have = brought.get(canonicalize_name(req.name))
            if have and not req.specifier.contains(have, prereleases=True):
                out.append(f"{dist.name} {dist.version} needs {req}; the Kaggle image has {req.name} {have}")
    return out


def saved_keras_version(path: str) -> str:
    """The Keras version a ``.keras`` file was saved with (its ``metadata.json``).

    >>> saved_keras_version("runs/demo/model_cell/best.keras")  # doctest: +SKIP
    '3.15.1'
    """
    try:
        version = json.loads(zipfile.ZipFile(io.BytesIO(fs.read_bytes(path))).read("metadata.json"))["keras_version"]
        Version(version)
    except FileNotFoundError as err:
        raise WheelhouseError(f"--models {path}: no such file") from err
    except (zipfile.BadZipFile, KeyError, ValueError, InvalidVersion) as err:
        raise WheelhouseError(f"--models {path}: not a .keras file with the Keras version it was saved with "
                              f"({type(err).__name__}: {err})") from err
    return version


def keras_to_ship(models: Iterable[str], image_keras: str = KAGGLE_BRINGS["keras"]) -> str | None:
    """The Keras version to ship so that every model in ``models`` loads: the newest one they were
    saved with, when it is newer than the image's (``image_keras``); None when the image's will do.

    >>> keras_to_ship([], "3.13.2") is None
    True
    """
    versions = [saved_keras_version(m) for m in models]
    newest = max(versions, key=Version, default=None)
    return newest if newest is not None and Version(newest) > Version(image_keras) else None


def _pip(step: str, *args: str) -> subprocess.CompletedProcess:
    """Run pip (this Python's); a failure raises naming the step and pip's own error lines."""
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
        said = [ln for ln in lines if ln.startswith("ERROR")] or lines[-3:] or ["(no output)"]
        raise WheelhouseError(f"{step} failed: pip said: {' / '.join(said)}")
    return result


def _hpa_tf_wheel(source: str | None, tmp: Path) -> str:
    """hpa-tf as pip should resolve it: a wheel built from a project folder, a wheel file as given,
    or (no ``source`` and no checkout) this version from the package index."""
    if source is None and (ROOT / "pyproject.toml").exists():
        source = str(ROOT)
    if source is None:
        return f"hpa-tf=={metadata.version('hpa-tf')}"
    path = Path(source)
    if path.suffix == ".whl":
        if not path.is_file():
            raise WheelhouseError(f"--source {source}: no such wheel file")
        return str(path.resolve())
    if not (path / "pyproject.toml").is_file():
        raise WheelhouseError(f"--source {source}: not hpa-tf's project folder (no pyproject.toml) nor a .whl file")
    print(f"building hpa-tf's wheel from {path.resolve()} ...", flush=True)
    _pip(f"building hpa-tf's wheel from {source}", "wheel", "--no-deps", "-q", "-w", str(tmp), str(path))
    return str(next(tmp.glob("hpa_tf-*.whl")))


def resolve(requirements: Sequence[str], python_version: str, platform: str, tmp: Path,
            unpinned: Iterable[str] = ()) -> list[Dist]:
    """pip's resolution of ``requirements`` for the target (wheels only), on the Kaggle image's Python
    with its packages pinned at the image's versions (but ``unpinned``, which are shipped): what is
    shipped must work with them.

    >>> [d.name for d in resolve(["hpa-tf"], "3.12", KAGGLE_PLATFORM, Path("/tmp"))][:2]  # doctest: +SKIP
    ['hpa-tf', 'iterative-stratification']
    """
    pins = []
    if python_version == KAGGLE_PYTHON:
        free = {canonicalize_name(u) for u in unpinned}
        (tmp / "kaggle.txt").write_text("".join(f"{n}=={v}\n" for n, v in KAGGLE_BRINGS.items()
                                                if canonicalize_name(n) not in free))
        pins = ["--constraint", str(tmp / "kaggle.txt")]
    step = (f"resolving hpa-tf's dependencies for Python {python_version} on {platform}"
            + (" against the Kaggle image's versions" if pins else ""))
    print(f"{step} ...", flush=True)
    _pip(step, "install", "--dry-run", "--ignore-installed", "-q", "--report", str(tmp / "report.json"),
         "--target", str(tmp / "target"), *_target(python_version, platform), *pins, *requirements)
    return [Dist(i["metadata"]["name"], i["metadata"]["version"], tuple(i["metadata"].get("requires_dist", [])))
            for i in json.loads((tmp / "report.json").read_text())["install"]]


def _target(python_version: str, platform: str) -> list[str]:
    return ["--only-binary=:all:", "--python-version", python_version,
            *(arg for tag in platform_tags(platform) for arg in ("--platform", tag))]


def build(out: str, python_version: str = KAGGLE_PYTHON, platform: str = KAGGLE_PLATFORM,
          source: str | None = None, also_ship: Iterable[str] = (), models: Iterable[str] = ()) -> dict:
    """Write the wheelhouse into ``out`` and return its manifest (also ``out/wheelhouse.json``):
    ``install`` lists the requirements the notebook gives pip (``hpa-tf``, and ``keras==V`` when
    ``models`` were saved by a newer Keras than the image's).

    >>> build("wheelhouse", python_version="3.12")["wheels"]  # doctest: +SKIP
    ['hpa_tf-0.1.0-py3-none-any.whl', 'iterative_stratification-0.1.9-py3-none-any.whl', ...]
    """
    # Local folders only: pip reads and writes nothing else, and the folder is uploaded from here.
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        keras_version = keras_to_ship(models)
        install = ["hpa-tf"] + ([f"keras=={keras_version}"] if keras_version else [])
        if keras_version:
            also_ship = [*also_ship, "keras"]
            print(f"the models were saved with Keras {keras_version}, newer than the Kaggle image's "
                  f"{KAGGLE_BRINGS['keras']}: shipping it (the notebook installs keras=={keras_version})", flush=True)
        hpa_tf = _hpa_tf_wheel(source, Path(tmp))
        resolved = resolve([hpa_tf, *install[1:]], python_version, platform, Path(tmp), unpinned=also_ship)
        unknown = sorted({canonicalize_name(s) for s in also_ship} - {d.key for d in resolved})
        if unknown:
            raise WheelhouseError(f"--ship {' '.join(unknown)}: hpa-tf does not depend on it on Python {python_version} "
                                  "(--ship takes packages that hpa-tf needs and a Kaggle image used to bring)")
        env = marker_environment(python_version, platform)
        ship, there = split(resolved, "hpa-tf", env, ship=also_ship)
        print(f"brought by the Kaggle image, not shipped: {', '.join(d.name for d in there)}")
        print(f"shipped: {', '.join(f'{d.name} {d.version}' for d in ship)}", flush=True)
        for line in conflicts(ship, env):
            print(f"warning: {line}: where the image lacks the package that needs it, pip cannot install it offline")
        stale = sorted(folder.glob("*.whl"))
        for path in stale:
            path.unlink()
        if stale:
            print(f"removed {len(stale)} wheels of an earlier build from {folder}")
        if hpa_tf.endswith(".whl"):
            shutil.copy(hpa_tf, folder)
        wanted = [f"{d.name}=={d.version}" for d in ship if d.key != "hpa-tf" or not hpa_tf.endswith(".whl")]
        print(f"downloading {len(wanted)} wheels into {folder} ...", flush=True)
        _pip(f"downloading {', '.join(wanted)} for Python {python_version} on {platform}", "download", "--no-deps", "-q",
             "-d", str(folder), *_target(python_version, platform), *wanted)
    wheels = sorted(p.name for p in folder.glob("*.whl"))
    manifest = {"python_version": python_version, "platform": platform, "install": install, "wheels": wheels,
                "shipped": {d.name: d.version for d in ship}, "brought_by_kaggle": [d.name for d in there]}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum((folder / w).stat().st_size for w in wheels) / 2**20
    print(f"wrote {len(wheels)} wheels ({size:.1f} MiB) and {MANIFEST} to {folder}. Upload the folder as a Kaggle "
          f"dataset; in the notebook: pip install --no-index --find-links /kaggle/input/<dataset> {' '.join(install)}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m hpa_tf.wheelhouse", __doc__)
    parser.add_argument("out", help="the folder to write the wheels into (created if absent)")
    parser.add_argument("--python-version", default=KAGGLE_PYTHON,
                        help=f"the notebook's Python, major.minor (default {KAGGLE_PYTHON}: Kaggle's today; "
                        "`python --version` in the notebook tells)")
    parser.add_argument("--platform", default=KAGGLE_PLATFORM,
                        help=f"the notebook machine's platform tag (default {KAGGLE_PLATFORM}; older manylinux "
                        "wheels are accepted too)")
    parser.add_argument("--ship", action="append", default=[], metavar="PACKAGE",
                        help="ship this too although a Kaggle image used to bring it (an image that dropped it); "
                        "may be repeated")
    parser.add_argument("--source", help="hpa-tf's project folder or a built hpa_tf-*.whl (default: this checkout; "
                        "an installed hpa-tf without a checkout: its version from the package index)")
    parser.add_argument("--models", nargs="+", default=[], metavar="M.keras",
                        help="the models the notebook will load: a Keras newer than the image's that saved them is "
                        "shipped too")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python_version):
        parser.error(f"--python-version {args.python_version}: give major.minor, such as 3.12")
    build(args.out, args.python_version, args.platform, args.source, args.ship, args.models)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
