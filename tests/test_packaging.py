"""The wheel ``pip wheel .`` builds: every module of the package, ``py.typed``, and the metadata pip installs from."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import kerasish

ROOT = Path(__file__).resolve().parent.parent
# What the build reads: the package, its metadata and build system, and the README that becomes the long description.
BUILD_INPUTS = ("kerasish", "setup.cfg", "pyproject.toml", "README.md")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Iterator[zipfile.ZipFile]:
    """The wheel built from a copy of this checkout (so no build byproducts land in it), without build isolation."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("the build backend, setuptools, is not installed")
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(out), "."]
    env = {**os.environ, "PIP_NO_INDEX": "1"}  # nothing to download: the backend is the installed setuptools
    build = subprocess.run(command, cwd=source, env=env, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stdout + build.stderr
    # Deprecations in the build turn into errors in a later setuptools.
    assert "DeprecationWarning" not in build.stdout + build.stderr, build.stdout + build.stderr
    (path,) = out.glob("*.whl")
    assert path.name == f"kerasish-{kerasish.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(path) as archive:
        yield archive


def test_the_wheel_holds_every_module_and_py_typed_and_nothing_else(wheel):
    package = ROOT / "kerasish"
    expected = {
        path.relative_to(ROOT).as_posix()
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".typed")
    }
    assert {"kerasish/py.typed", "kerasish/callbacks/__init__.py", "kerasish/callbacks/base.py"} <= expected
    names = wheel.namelist()
    assert {name for name in names if name.startswith("kerasish/")} == expected
    dist_info = f"kerasish-{kerasish.__version__}.dist-info/"
    assert [name for name in names if not name.startswith(("kerasish/", dist_info))] == []  # no tests, no examples


def metadata(wheel: zipfile.ZipFile) -> Message:
    return message_from_bytes(wheel.read(f"kerasish-{kerasish.__version__}.dist-info/METADATA"))


def requirements(wheel: zipfile.ZipFile, extra: str | None = None) -> set[str]:
    """The names of the distributions the wheel requires, or those ``extra`` adds."""
    names = set()
    for line in metadata(wheel).get_all("Requires-Dist"):
        requirement = Requirement(line)
        if requirement.marker is None:
            wanted = extra is None
        else:
            wanted = extra is not None and requirement.marker.evaluate({"extra": extra})
        if wanted:
            names.add(requirement.name)
    return names


def test_the_metadata_names_the_package_its_version_and_what_it_needs(wheel):
    meta = metadata(wheel)
    assert (meta["Name"], meta["Version"]) == ("kerasish", kerasish.__version__)
    assert meta["License-Expression"] == "MIT"
    assert requirements(wheel) == {"torch", "torchmetrics", "pandas", "tqdm"}
    assert set(meta.get_all("Provides-Extra")) == {"demo", "dev", "plot", "stateful", "tensorboard"}
    assert requirements(wheel, "plot") == {"matplotlib"}
    assert requirements(wheel, "tensorboard") == {"tensorboard"}
    assert requirements(wheel, "demo") == {"scikit-learn"}
    assert requirements(wheel, "stateful") == {"torchdata"}


def test_the_dev_extra_holds_every_other_one(wheel):
    # The Makefile counts a dev venv as a demo venv too, and the test suite draws plots and writes TensorBoard files.
    dev = requirements(wheel, "dev")
    for extra in ("demo", "plot", "stateful", "tensorboard"):
        assert requirements(wheel, extra) <= dev, extra
