"""What ships: the wheel holds the migrations and ``py.typed``; models match migrations."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_contains_migrations_and_py_typed(tmp_path: Path) -> None:
    # Build from a copy so that the build's own build/ and *.egg-info never land in
    # the working tree that other runs are reading.
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", source)
    for name in ("README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, source)
    shutil.copytree(
        ROOT / "django_onceonly",
        source / "django_onceonly",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    dist = tmp_path / "dist"

    build = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert build.returncode == 0, build.stdout + build.stderr
    wheels = list(dist.glob("django_onceonly-*.whl"))
    assert len(wheels) == 1
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    assert "django_onceonly/migrations/__init__.py" in names
    assert "django_onceonly/migrations/0001_initial.py" in names
    assert "django_onceonly/py.typed" in names
    assert "django_onceonly/management/commands/onceonly_purge.py" in names
    assert "django_onceonly/management/commands/onceonly_release.py" in names
    assert not any(name.startswith("tests/") for name in names)
    # Every migration in the source tree ships.
    for migration in (ROOT / "django_onceonly" / "migrations").glob("*.py"):
        assert f"django_onceonly/migrations/{migration.name}" in names


@pytest.mark.django_db(databases=["default"])
def test_models_match_migrations() -> None:
    out = StringIO()

    # Exits with status 1 (SystemExit) if a model change has no migration.
    call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=StringIO())

    assert "No changes detected" in out.getvalue()
