"""The service API: ``/v1/check-lock`` and its siblings over HTTP (needs the ``[drf]`` extra).

Mount it with ``path("onceonly/", include("django_onceonly.api.urls"))``. Every endpoint
needs an authenticated caller, whose principal is its scope (``ONCEONLY_API_SCOPE``
overrides that). This package sits on top of ``check_lock`` and the stores and nothing
below it imports it.
"""
