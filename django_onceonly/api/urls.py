"""Mount with ``path("onceonly/", include("django_onceonly.api.urls"))``."""

from __future__ import annotations

from django.urls import URLPattern, path, register_converter

from . import views
from .openapi import spectacular_installed

app_name = "onceonly_api"


class AnyKeyConverter:
    """Any text, slashes and line breaks included: the view validates it as a key (400)."""

    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(AnyKeyConverter, "onceonly_key")

urlpatterns: list[URLPattern] = [
    path("v1/check-lock", views.CheckLockView.as_view(), name="check-lock"),
    path("v1/complete", views.CompleteView.as_view(), name="complete"),
    path("v1/release", views.ReleaseView.as_view(), name="release"),
    path("v1/fail", views.FailView.as_view(), name="fail"),
    path("v1/locks/<onceonly_key:key>", views.LockDetailView.as_view(), name="lock"),
]

if spectacular_installed():
    from .spectacular import SchemaView

    urlpatterns.append(path("v1/schema", SchemaView.as_view(), name="schema"))
