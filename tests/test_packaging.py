"""The package metadata: pyproject's module list against the repo, the wheel it builds, and the requirement
files against constraints.txt (the tested versions)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def py_modules() -> set[str]:
    return set(pyproject()["tool"]["setuptools"]["py-modules"])


def top_level_modules() -> set[str]:
    return {path.stem for path in ROOT.glob("*.py")}


def requirements(name: str) -> list[Requirement]:
    """The requirement lines of one requirements file, following `-r`; options such as --extra-index-url skipped."""
    found = []
    for line in (ROOT / name).read_text().splitlines():
        line = line.split(" #")[0].strip()
        if line.startswith("-r "):
            found += requirements(line[3:].strip())
        elif line and not line.startswith(("#", "-")):
            found.append(Requirement(line))
    return found


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonical(name)] = version
    return pins


def test_py_modules_are_the_top_level_python_files_and_the_package():
    listed, present = py_modules(), top_level_modules()
    assert listed == present, (
        "pyproject.toml's [tool.setuptools] py-modules must name every top-level *.py file and nothing else: "
        f"add {sorted(present - listed)}, remove {sorted(listed - present)}"
    )
    assert pyproject()["tool"]["setuptools"]["packages"] == ["recipe"]


def test_the_wheel_holds_the_modules_and_the_core_requirements(tmp_path):
    # built from a copy, so that the build leaves no build/ or *.egg-info/ in the repo
    src = tmp_path / "src"
    src.mkdir()
    for path in [*ROOT.glob("*.py"), *ROOT.glob("requirements*.txt"), ROOT / "pyproject.toml", ROOT / "README.md"]:
        shutil.copy2(path, src)
    shutil.copytree(ROOT / "recipe", src / "recipe", ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*command, "--disable-pip-version-check", "-q", "-w", str(tmp_path / "dist")], check=True)
    (wheel,) = (tmp_path / "dist").glob("smollm2_recipe-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {n[:-3] for n in names if "/" not in n and n.endswith(".py")} == py_modules() & top_level_modules()
    package = {p.name for p in (ROOT / "recipe").glob("*.py")}
    assert {n.removeprefix("recipe/") for n in names if n.startswith("recipe/")} == package
    assert not [n for n in names if n.split("/")[0] in {"assets", "launch", "docs", "tests", "benchmarks"}]
    requires = [line.split(":", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    core = {str(Requirement(line)) for line in requires if "extra ==" not in line}
    assert core == {str(r) for r in requirements("requirements.txt")}


def test_every_requirement_has_a_tested_version_within_its_range():
    pins = constraints()
    files = sorted(path.name for path in ROOT.glob("requirements*.txt"))
    for name in files:
        for req in requirements(name):
            if "+" in str(req.specifier):
                continue  # the CPU build's torch==X+cpu: test_the_cpu_install_takes_the_tested_torch
            assert canonical(req.name) in pins, f"{name}: {req.name} has no tested version in constraints.txt"
            assert req.specifier.contains(pins[canonical(req.name)], prereleases=True), (
                f"{name}: {req} excludes the tested {req.name}=={pins[canonical(req.name)]} of constraints.txt"
            )


def test_the_cpu_install_takes_the_tested_torch():
    (torch,) = [r for r in requirements("requirements-cpu.txt") if r.name == "torch" and "+cpu" in str(r.specifier)]
    assert str(torch.specifier) == f"=={constraints()['torch']}+cpu"
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in (ROOT / "requirements-cpu.txt").read_text()
