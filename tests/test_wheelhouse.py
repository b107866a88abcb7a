"""The offline install: a fresh environment that has only what a Kaggle image brings, and no package
index, installs hpa-tf from the wheelhouse and predicts.

No network either while the wheelhouse is built: a local folder of wheels stands in for PyPI. Its
wheels of the packages the image lacks are repacked from this environment's installed copies (so
their code really runs); those of the image's packages hold only their metadata (pip resolves them,
the wheelhouse must not ship them). The fresh environment sees this environment's copies of the
image's packages (and their dependencies) through a .pth line to a folder of links to them alone:
a package missing from the wheelhouse fails the install or the imports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest
from packaging.requirements import Requirement
from packaging.tags import sys_tags
from packaging.utils import canonicalize_name

from hpa_tf.submission import read_submission
from hpa_tf.wheelhouse import KAGGLE_BRINGS, KAGGLE_PLATFORM, Dist, conflicts, marker_environment, split

ROOT = Path(__file__).resolve().parents[1]
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
NO_INDEX = {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_NO_INDEX": "1"}
SHIPPED = ("scikit-image", "pycocotools", "tifffile", "iterative-stratification")  # in no Kaggle image, or not in all


def _requirements() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def test_hpa_tf_accepts_the_kaggle_images_packages():
    """No requirement asks for a newer copy than the image has: pip could not upgrade it offline."""
    env = marker_environment("3.12", KAGGLE_PLATFORM)
    assert conflicts([Dist("hpa-tf", "0", tuple(_requirements()))], env) == []
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert conflicts([Dist("hpa-tf[cpu]", "0", tuple(extras["cpu"]))], env, {"tensorflow-cpu": "2.20.0"}) == []


def test_the_split_ships_what_the_image_lacks_and_its_extras_needs():
    env = marker_environment("3.12", KAGGLE_PLATFORM)
    resolved = [
        Dist("hpa-tf", "1", ("keras>=3", "scikit-image", "extra-user[fast]", "old-only; python_version < '3.11'")),
        Dist("keras", "3", ("numpy", "packaging")), Dist("numpy", "2"), Dist("packaging", "26"),
        Dist("scikit-image", "0.25", ("numpy", "packaging", "networkx", "pytest; extra == 'test'")),
        Dist("networkx", "3"), Dist("pytest", "8"), Dist("old-only", "1"),
        Dist("extra-user", "1", ("speedup; extra == 'fast'",)), Dist("speedup", "1"),
    ]
    ship, there = split(resolved, "hpa-tf", env, brought=["keras", "numpy"])
    assert [d.name for d in ship] == ["extra-user", "hpa-tf", "networkx", "scikit-image", "speedup"]
    assert [d.name for d in there] == ["keras", "numpy", "packaging"]  # keras's own dependency is there too
    ship, there = split(resolved, "hpa-tf", env, brought=["keras", "numpy"], ship=["packaging"])  # an image without it
    assert "packaging" in [d.name for d in ship] and "packaging" not in [d.name for d in there]


def test_a_requirement_newer_than_the_image_is_named():
    env = marker_environment("3.12", KAGGLE_PLATFORM)
    found = conflicts([Dist("tifffile", "2099.1", ("numpy>=3",))], env)
    assert found == [f"tifffile 2099.1 needs numpy>=3; the Kaggle image has numpy {KAGGLE_BRINGS['numpy']}"]


def _installed_closure(names) -> dict[str, metadata.Distribution]:
    """The installed distributions ``names`` and everything they depend on here."""
    found: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            found[name] = dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def _dist_info(dist: metadata.Distribution) -> str:
    return next(f.parts[0] for f in dist.files if f.parts[0].endswith(".dist-info"))


def _repack(dist: metadata.Distribution, tmp: Path, out: Path) -> None:
    """A wheel of an installed distribution, all its files."""
    unpacked = tmp / f"unpacked-{canonicalize_name(dist.metadata['Name'])}"
    info = _dist_info(dist)
    skip = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    for f in dist.files:
        if f.parts[0] == ".." or f.suffix == ".pyc" or (f.parts[0] == info and f.name in skip):
            continue
        (unpacked / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(dist.locate_file(f), unpacked / f)
    subprocess.run([sys.executable, "-m", "wheel", "pack", "-d", str(out), str(unpacked)], check=True,
                   capture_output=True, timeout=300)


def _metadata_only(dist: metadata.Distribution, version: str, tmp: Path, out: Path) -> None:
    """A wheel holding an installed distribution's metadata alone, as ``version``."""
    name = dist.metadata["Name"]
    info = tmp / f"stub-{canonicalize_name(name)}" / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = dist.locate_file(f"{_dist_info(dist)}/METADATA").read_text().splitlines(keepends=True)
    (info / "METADATA").write_text("".join(f"Version: {version}\n" if ln.startswith("Version:") else ln for ln in lines))
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nGenerator: hpa-tf tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    subprocess.run([sys.executable, "-m", "wheel", "pack", "-d", str(out), str(info.parent)], check=True,
                   capture_output=True, timeout=300)


def _link_farm(dists, folder: Path) -> None:
    """A folder of links to the top-level files of ``dists`` (their packages and metadata) alone."""
    folder.mkdir()
    for dist in dists:
        for top in {f.parts[0] for f in dist.files if f.parts[0] not in ("..", "__pycache__")}:
            if not (folder / top).exists():
                (folder / top).symlink_to(dist.locate_file(top))


def _run(*cmd: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def kaggle_like(tmp_path_factory) -> dict:
    """A wheelhouse built without a network, and a fresh environment with only the image's packages."""
    tmp = tmp_path_factory.mktemp("offline")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", "*.egg-info",
                                                             "build", "dist", ".pytest_cache", "wheelhouse"))
    offline = {**os.environ, **NO_INDEX}
    offline.pop("PIP_FIND_LINKS", None)
    built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
                 str(src), env=offline)
    assert built.returncode == 0, built.stderr[-3000:]
    hpa_tf_wheel = next((tmp / "dist").glob("hpa_tf-*.whl"))

    brought = _installed_closure(KAGGLE_BRINGS)
    assert not set(SHIPPED) & set(brought), "the test environment's image packages must not bring what is shipped"
    needed = _installed_closure(Requirement(r).name for r in _requirements())
    index = tmp / "index"
    index.mkdir()
    for name, dist in needed.items():
        if name in brought:  # at the image's version where known: the command pins them on Kaggle's Python
            _metadata_only(dist, KAGGLE_BRINGS.get(name, dist.version), tmp, index)
        else:
            _repack(dist, tmp, index)

    wheelhouse = tmp / "wheelhouse"
    platform = next(t.platform for t in sys_tags() if t.platform.startswith("manylinux_2_"))
    build = _run(sys.executable, "-m", "hpa_tf.wheelhouse", str(wheelhouse), "--python-version", PYTHON,
                 "--platform", platform, "--source", str(hpa_tf_wheel), env={**offline, "PIP_FIND_LINKS": str(index)})
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-3000:]

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)  # with pip, offline
    _link_farm(brought.values(), tmp / "image")
    (next(venv.glob("lib/python*/site-packages")) / "_kaggle_image.pth").write_text(str(tmp / "image") + "\n")
    return {"tmp": tmp, "wheelhouse": wheelhouse, "venv": venv, "index": index, "wheel": hpa_tf_wheel,
            "log": build.stdout, "offline": offline}


def test_pip_installs_hpa_tf_from_the_wheelhouse_alone_and_it_predicts(kaggle_like, synth_dir, saved_models, tmp_path):
    venv, wheelhouse = kaggle_like["venv"], kaggle_like["wheelhouse"]
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), **NO_INDEX}
    shipped = {canonicalize_name(n) for n in json.loads((wheelhouse / "wheelhouse.json").read_text())["shipped"]}
    assert {"hpa-tf", *SHIPPED} <= shipped and not shipped & set(KAGGLE_BRINGS)

    python = str(venv / "bin" / "python")
    install = _run(python, "-m", "pip", "install", "--no-index", "--find-links", str(wheelhouse), "hpa-tf", env=env)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]

    where = _run(python, "-c", "import hpa_tf, skimage, iterstrat, pycocotools, tifffile, numpy\n"
                 "for m in (hpa_tf, skimage, iterstrat, pycocotools, tifffile, numpy): print(m.__file__)",
                 env=env, cwd=tmp_path)
    assert where.returncode == 0, where.stderr[-3000:]
    *ours, numpy = where.stdout.split()
    assert all(p.startswith(str(venv)) for p in ours), ours  # installed from the wheelhouse
    assert str(kaggle_like["tmp"] / "image") in numpy  # the image's copy, untouched

    assert "usage" in _run("hpa-tf-predict", "--help", env=env, cwd=tmp_path).stdout
    out = tmp_path / "submission.csv"
    predict = _run("hpa-tf-predict", "--data", str(synth_dir / "test"), "--models", *saved_models, "--out", str(out),
                   "--sample-submission", str(synth_dir / "sample_submission.csv"), "--workers", "0",
                   "--overlays", "1", env=env, cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr[-3000:]
    sample = pd.read_csv(synth_dir / "sample_submission.csv")
    rows = read_submission(str(out))
    assert [r.image_id for r in rows] == list(sample["ID"]) and all(r.masks for r in rows)


def test_a_wheelhouse_for_a_python_without_wheels_names_the_step_and_the_package(kaggle_like, tmp_path):
    """The stand-in index has this Python's compiled wheels only: another version cannot be served."""
    assert "shipped: hpa-tf" in kaggle_like["log"] and "brought by the Kaggle image" in kaggle_like["log"]
    other = "3.10" if PYTHON != "3.10" else "3.12"
    build = _run(sys.executable, "-m", "hpa_tf.wheelhouse", str(tmp_path / "wh"), "--python-version", other,
                 "--source", str(kaggle_like["wheel"]), env={**kaggle_like["offline"], "PIP_FIND_LINKS": str(kaggle_like["index"])})
    assert build.returncode == 2, build.stderr
    error = build.stderr.splitlines()[0]
    assert f"resolving hpa-tf's dependencies for Python {other}" in error and "scikit-image" in error, error


def test_models_saved_by_a_newer_keras_ship_that_keras(kaggle_like, saved_models, tmp_path):
    """Models a newer Keras saved than the image's may not load there: ``--models`` ships that Keras
    and the manifest asks the notebook's pip for it (pip replaces the image's copy only when asked)."""
    from hpa_tf.wheelhouse import WheelhouseError, keras_to_ship, saved_keras_version

    from packaging.version import Version

    here = metadata.version("keras")
    if Version(here) <= Version(KAGGLE_BRINGS["keras"]):
        pytest.skip(f"this Keras ({here}) is not newer than the Kaggle image's")
    assert saved_keras_version(saved_models[0]) == here
    assert keras_to_ship(saved_models, image_keras="3.0.0") == here
    assert keras_to_ship(saved_models, image_keras=here) is None  # the image's Keras reads them
    with pytest.raises(WheelhouseError, match="not a .keras file"):
        keras_to_ship([str(ROOT / "pyproject.toml")])

    index = tmp_path / "index"  # the stand-in index, with this Keras's real wheel beside the image's stub
    shutil.copytree(kaggle_like["index"], index)
    for stub in index.glob("keras-*.whl"):
        stub.unlink()
    _repack(metadata.distribution("keras"), tmp_path, index)
    wheelhouse = tmp_path / "wh"
    build = _run(sys.executable, "-m", "hpa_tf.wheelhouse", str(wheelhouse), "--python-version", PYTHON,
                 "--platform", next(t.platform for t in sys_tags() if t.platform.startswith("manylinux_2_")),
                 "--source", str(kaggle_like["wheel"]), "--models", *saved_models,
                 env={**kaggle_like["offline"], "PIP_FIND_LINKS": str(index)})
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-3000:]
    manifest = json.loads((wheelhouse / "wheelhouse.json").read_text())
    assert manifest["install"] == ["hpa-tf", f"keras=={here}"] and manifest["shipped"]["keras"] == here
    assert list(wheelhouse.glob(f"keras-{here}-*.whl"))
    assert f"newer than the Kaggle image's {KAGGLE_BRINGS['keras']}" in build.stdout
