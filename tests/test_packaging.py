"""What ships: the wheel holds every module, the migrations, the admin templates, ``py.typed``
and the licence; models match migrations."""

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
def test_wheel_contains_modules_migrations_templates_and_licence(tmp_path: Path) -> None:
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
    package = ROOT / "django_onceonly"
    # Every module (the admin package's among them), migration and template ships.
    for module in package.rglob("*.py"):
        assert module.relative_to(ROOT).as_posix() in names
    templates = [path for path in (package / "templates").rglob("*") if path.is_file()]
    assert len(templates) >= 8
    for template in templates:
        assert template.relative_to(ROOT).as_posix() in names
    assert "django_onceonly/templates/admin/django_onceonly/idempotencyrecord/change_list.html" in (
        names
    )
    # The licence, and nothing from the old, non-existent static/ folder.
    licences = [name for name in names if name.endswith(".dist-info/licenses/LICENSE")]
    assert len(licences) == 1
    assert "MIT License" in zipfile.ZipFile(wheels[0]).read(licences[0]).decode()
    metadata = next(name for name in names if name.endswith(".dist-info/METADATA"))
    assert "License-Expression: MIT" in zipfile.ZipFile(wheels[0]).read(metadata).decode()
    assert not any(name.startswith("django_onceonly/static/") for name in names)


@pytest.mark.django_db(databases=["default"])
def test_models_match_migrations() -> None:
    out = StringIO()

    # Exits with status 1 (SystemExit) if a model change has no migration.
    call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=StringIO())

    assert "No changes detected" in out.getvalue()


def test_names_that_moved_stay_importable_where_they_were() -> None:
    # The admin became a package, its queries and the stats' moved to managers.py, the
    # heartbeat and DuplicateTask left celery.py: every public name still imports from
    # its old place, as the same object.
    import django_onceonly
    from django_onceonly import admin, exceptions, managers, models, stats

    assert django_onceonly.DuplicateTask is exceptions.DuplicateTask
    assert "DuplicateTask" in django_onceonly.__all__
    pytest.importorskip("celery")
    from django_onceonly import celery, heartbeat

    assert celery.DuplicateTask is exceptions.DuplicateTask
    assert celery._heartbeat is heartbeat.heartbeat
    for name in (
        "IdempotencyRecordAdmin",
        "EstimatedCountPaginator",
        "RecordChangeList",
        "ColumnValueFilter",
        "TaskFilter",
        "ScopeFilter",
        "ConditionFilter",
        "distinct_values",
        "release_if_unchanged",
        "lease_is_live",
        "MAX_RELEASE",
        "VALUES_LIMIT",
        "LIST_DEFERRED",
        "STATUS_CLASSES",
    ):
        assert getattr(admin, name) is not None, name
    for name in ("COUNT_CAP", "Count", "count_rows", "planner_estimate", "stuck_filter"):
        assert getattr(stats, name) is getattr(managers, name), name
    assert models.IdempotencyRecordQuerySet is managers.IdempotencyRecordQuerySet
