"""The distribution: one top-level package with its public API, typed, and the import floors kept."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_installs_exactly_one_top_level_package(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # it would shadow the isolated build env
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)]
    proc = subprocess.run(pip, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("dualwrite-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"dualwrite"}
    assert "dualwrite/py.typed" in names
    assert not any(n.startswith("dualwrite/") and "/tests/" in n for n in names)


def test_public_api_and_version() -> None:
    code = (
        "from dualwrite import DualWriter, Tables, TableSpec, Backends, WriteTx, load_settings, Settings, "
        "ChangeEvent, Phase, PHASES, DualwriteError, __version__; print(__version__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    version = proc.stdout.strip()
    cli = subprocess.run([sys.executable, "-m", "dualwrite", "--version"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and version in cli.stdout


def test_every_public_error_is_a_dualwrite_error() -> None:
    import dualwrite
    from dualwrite import errors

    for name in dualwrite.__all__:
        value = getattr(dualwrite, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, errors.DualwriteError), name


def test_import_floors_hold() -> None:
    """The layering contracts of pyproject.toml ([tool.importlinter]); .ci/run runs them too."""
    pytest.importorskip("importlinter")
    proc = subprocess.run(["lint-imports"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
