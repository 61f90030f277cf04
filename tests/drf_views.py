"""Views that use ``Idempotency-Key``, for ``tests/test_drf*.py`` and the live server.

Every view that does work records one line per run (``runs_of``), in this process and,
when ``ONCEONLY_DRF_EFFECTS`` names a directory (the live server), in a file there, so
that a test can count how many times the view really ran for a key.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from pathlib import Path
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.template import engines
from django.template.response import TemplateResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import serializers, viewsets
from rest_framework.authentication import BasicAuthentication
from rest_framework.decorators import (
    api_view,
    authentication_classes,
    permission_classes,
    throttle_classes,
)
from rest_framework.permissions import AllowAny, BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from django_onceonly.drf import IdempotentMixin, idempotent

_lock = threading.Lock()
_runs: list[tuple[str, str]] = []
_orders = itertools.count(1001)


def _effects_file() -> Path | None:
    directory = os.environ.get("ONCEONLY_DRF_EFFECTS")
    return Path(directory) / "runs.log" if directory else None


def record_run(view: str, request: HttpRequest | Request) -> int:
    """Note that ``view`` ran for this request's key; return a new order number."""
    key = request.headers.get("Idempotency-Key", "")
    with _lock:
        _runs.append((view, key))
        number = next(_orders)
    path = _effects_file()
    if path is not None:
        with open(path, "a", encoding="utf-8") as out:  # one short append: atomic
            out.write(f"{view}\t{key}\n")
    return number


def runs_of(view: str | None = None) -> list[str]:
    """The keys ``view`` ran for in this process, in order."""
    with _lock:
        return [key for name, key in _runs if view is None or name == view]


def reset_runs() -> None:
    with _lock:
        _runs.clear()


class CheckoutSerializer(serializers.Serializer[Any]):
    cart = serializers.CharField(max_length=50)
    amount = serializers.DecimalField(max_digits=8, decimal_places=2)


def _checkout(view: str, request: Request) -> Response:
    serializer = CheckoutSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)  # an exception: nothing stored
    number = record_run(view, request)
    body = {"order": number, "cart": serializer.validated_data["cart"], "status": "paid"}
    return Response(body, status=201, headers={"Location": f"/orders/{number}"})


# -- DRF function views -----------------------------------------------------------------


@api_view(["POST"])
@authentication_classes([BasicAuthentication])
@permission_classes([IsAuthenticated])
@idempotent
def checkout(request: Request) -> Response:
    return _checkout("checkout", request)


def _gated_checkout(view: str, request: Request) -> Response:
    """Runs, then waits until the test opens the gate ``<ONCEONLY_DRF_GATES>/<key>``."""
    response = _checkout(view, request)
    gates = os.environ.get("ONCEONLY_DRF_GATES")
    if gates:
        gate = Path(gates) / request.headers["Idempotency-Key"]
        deadline = time.monotonic() + 20
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    return response


@api_view(["POST"])
@authentication_classes([BasicAuthentication])
@permission_classes([IsAuthenticated])
@idempotent
def slow_checkout(request: Request) -> Response:
    return _gated_checkout("slow_checkout", request)


@api_view(["POST"])
@authentication_classes([BasicAuthentication])
@permission_classes([IsAuthenticated])
@idempotent(lease=2)
def short_lease_checkout(request: Request) -> Response:
    return _gated_checkout("short_lease_checkout", request)


@api_view(["POST"])
@authentication_classes([BasicAuthentication])
@permission_classes([IsAuthenticated])
@idempotent(required=False)
def optional_key(request: Request) -> Response:
    return _checkout("optional_key", request)


@api_view(["POST"])
@authentication_classes([])
@permission_classes([AllowAny])
@idempotent
def anonymous_checkout(request: Request) -> Response:
    return _checkout("anonymous_checkout", request)


@api_view(["POST"])
@authentication_classes([BasicAuthentication])
@permission_classes([IsAuthenticated])
@idempotent
def server_error(request: Request) -> Response:
    record_run("server_error", request)
    return Response({"error": "provider down"}, status=int(request.query_params.get("status", 500)))


@api_view(["POST"])
@authentication_classes([BasicAuthentication])
@permission_classes([IsAuthenticated])
@idempotent
def crashing(request: Request) -> Response:
    record_run("crashing", request)
    raise RuntimeError("the payment provider timed out")


@api_view(["POST"])
@authentication_classes([BasicAuthentication])
@permission_classes([IsAuthenticated])
@idempotent
def big(request: Request) -> Response:
    record_run("big", request)
    return Response({"blob": "x" * int(request.query_params["size"])}, status=201)


@api_view(["POST"])
@authentication_classes([BasicAuthentication])
@permission_classes([IsAuthenticated])
@idempotent
def echo_body(request: Request) -> Response:
    """Takes any body (text, form, bytes) and answers with its length."""
    record_run("echo_body", request)
    return Response({"length": len(request.body)}, status=201)


@api_view(["POST"])
@authentication_classes([BasicAuthentication])
@permission_classes([IsAuthenticated])
@idempotent
def upload(request: Request) -> Response:
    """A multipart upload: answers with each file's size."""
    record_run("upload", request)
    sizes = {name: request.data[name].size for name in request.FILES}
    return Response({"note": request.data.get("note"), "sizes": sizes}, status=201)


class DenyWithHeader(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return "X-Deny" not in request.headers


class ThrottleWithHeader(BaseThrottle):
    def allow_request(self, request: Request, view: Any) -> bool:
        return "X-Throttle" not in request.headers

    def wait(self) -> float:
        return 30.0


@api_view(["POST"])
@authentication_classes([BasicAuthentication])
@permission_classes([IsAuthenticated, DenyWithHeader])
@throttle_classes([ThrottleWithHeader])
@idempotent
def guarded(request: Request) -> Response:
    return _checkout("guarded", request)


# -- an APIView method and a ViewSet -------------------------------------------------------


class OrderView(APIView):
    authentication_classes = [BasicAuthentication]
    permission_classes = [IsAuthenticated]

    def get(self, request: Request) -> Response:
        return Response({"orders": len(runs_of("order_view"))})

    @idempotent
    def post(self, request: Request) -> Response:
        return _checkout("order_view", request)


class OrderViewSet(IdempotentMixin, viewsets.ViewSet):
    authentication_classes = [BasicAuthentication]
    permission_classes = [IsAuthenticated, DenyWithHeader]
    throttle_classes = [ThrottleWithHeader]
    idempotency_ttl = 3600

    def list(self, request: Request) -> Response:
        return Response({"orders": len(runs_of("viewset"))})

    def create(self, request: Request) -> Response:
        return _checkout("viewset", request)

    def partial_update(self, request: Request, pk: str) -> Response:
        record_run("viewset_update", request)
        if request.data.get("fail"):
            raise RuntimeError("cannot update")
        return Response({"order": int(pk), "note": request.data.get("note", "")})


class OptionalKeyViewSet(IdempotentMixin, viewsets.ViewSet):
    authentication_classes = [BasicAuthentication]
    permission_classes = [IsAuthenticated]
    idempotency_required = False
    idempotency_methods = ("POST",)
    idempotency_scope = staticmethod(lambda request: "shared-by-everyone")

    def create(self, request: Request) -> Response:
        return _checkout("optional_viewset", request)


# -- plain Django views -------------------------------------------------------------------


@csrf_exempt
@idempotent
def plain_checkout(request: HttpRequest) -> HttpResponse:
    number = record_run("plain_checkout", request)
    response = JsonResponse({"order": number}, status=201)
    response["Location"] = f"/orders/{number}"
    return response


@csrf_exempt
@idempotent
async def async_slow_checkout(request: HttpRequest) -> HttpResponse:
    """An async view that runs, then awaits its gate (the event loop stays free)."""
    number = record_run("async_slow_checkout", request)
    gates = os.environ.get("ONCEONLY_DRF_GATES")
    if gates:
        gate = Path(gates) / request.headers["Idempotency-Key"]
        deadline = time.monotonic() + 20
        while not gate.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    return JsonResponse({"order": number}, status=201, headers={"Location": f"/orders/{number}"})


@csrf_exempt
@idempotent
async def async_checkout(request: HttpRequest) -> HttpResponse:
    number = record_run("async_checkout", request)
    return JsonResponse({"order": number}, status=201)


@csrf_exempt
@idempotent
def receipt(request: HttpRequest) -> TemplateResponse:
    number = record_run("receipt", request)
    template = engines["django"].from_string("<p>Receipt {{ number }}</p>")
    return TemplateResponse(request, template, {"number": number}, status=201)


@csrf_exempt
@idempotent
def binary(request: HttpRequest) -> HttpResponse:
    record_run("binary", request)
    return HttpResponse(
        b"\x00\xff\xfe binary \x80 body", status=201, content_type="application/octet-stream"
    )


@csrf_exempt
@idempotent
def csv_export(request: HttpRequest) -> HttpResponse:
    number = record_run("csv_export", request)
    response = HttpResponse(f"order,total\n{number},9.90\n", content_type="text/csv")
    response["X-Export-Id"] = f"export-{number}"
    response["Content-Disposition"] = 'attachment; filename="orders.csv"'
    response.set_cookie("last_export", str(number))
    return response


@csrf_exempt
@idempotent
def streaming(request: HttpRequest) -> StreamingHttpResponse:
    record_run("streaming", request)
    return StreamingHttpResponse(iter([b"part 1,", b"part 2"]), content_type="text/plain")
