"""pytest fixtures for the test kit: ``pytest_plugins = ["django_onceonly.testing.fixtures"]``.

``onceonly_kit`` gives the helpers of :mod:`django_onceonly.testing.kit` with a database
that several threads may write to (pytest-django's ``transactional_db``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from . import kit


@pytest.fixture
def onceonly_kit(transactional_db: Any) -> ModuleType:
    """The test kit (``deliver_twice``, ``crash_after_side_effect``, ``store_down``,
    ``replay_request``), on a transactional test database."""
    return kit
