"""A real Celery app, its worker settings and the fixtures that run workers for the tests."""
