"""URLs of ``tests/drf_views.py``: the tests use them with ``pytest.mark.urls``, the live
server (``tests/drf_server_settings.py``) as its ROOT_URLCONF."""

from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from tests import drf_views

router = SimpleRouter()
router.register("viewset/orders", drf_views.OrderViewSet, basename="orders")
router.register("viewset/optional", drf_views.OptionalKeyViewSet, basename="optional")

urlpatterns = [
    path("drf/checkout/", drf_views.checkout),
    path("drf/slow-checkout/", drf_views.slow_checkout),
    path("drf/short-lease-checkout/", drf_views.short_lease_checkout),
    path("drf/optional/", drf_views.optional_key),
    path("drf/anonymous/", drf_views.anonymous_checkout),
    path("drf/server-error/", drf_views.server_error),
    path("drf/crashing/", drf_views.crashing),
    path("drf/big/", drf_views.big),
    path("drf/echo/", drf_views.echo_body),
    path("drf/guarded/", drf_views.guarded),
    path("drf/upload/", drf_views.upload),
    path("plain/receipt/", drf_views.receipt),
    path("drf/orders/", drf_views.OrderView.as_view()),
    path("plain/checkout/", drf_views.plain_checkout),
    path("plain/async-checkout/", drf_views.async_checkout),
    path("plain/async-slow-checkout/", drf_views.async_slow_checkout),
    path("plain/binary/", drf_views.binary),
    path("plain/csv/", drf_views.csv_export),
    path("plain/streaming/", drf_views.streaming),
    *router.urls,
]
