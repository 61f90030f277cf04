"""The ASGI application of ``tests/test_asgi_live.py`` (uvicorn serves it)."""

from __future__ import annotations

from django.core.asgi import get_asgi_application

application = get_asgi_application()
