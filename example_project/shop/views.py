"""The signup page (a Django form) and the signup API endpoint (DRF)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods
from rest_framework import serializers, status
from rest_framework.authentication import BasicAuthentication, SessionAuthentication
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from django_onceonly.drf import idempotent

from .accounts import sign_up
from .forms import SignupForm
from .models import Order


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        sign_up(form.cleaned_data["email"])
        return redirect("signup-done")
    return render(request, "shop/signup.html", {"form": form})


def signup_done(request: HttpRequest) -> HttpResponse:
    return render(request, "shop/signup_done.html")


class SignupSerializer(serializers.Serializer[Any]):
    email = serializers.EmailField(max_length=150)


class SignupAPIView(APIView):
    """``POST {"email": ...}``: 201 for a new account, 200 for one that exists."""

    authentication_classes: list[Any] = []  # anyone may sign up, no CSRF cookie needed
    permission_classes = [AllowAny]

    def post(self, request: Request) -> Response:
        serializer = SignupSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user, created = sign_up(serializer.validated_data["email"])
        return Response(
            {"user_id": user.pk, "email": user.email},
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class CheckoutSerializer(serializers.Serializer[Any]):
    cart = serializers.CharField(max_length=50)
    amount = serializers.DecimalField(max_digits=8, decimal_places=2, min_value=0)


@api_view(["POST"])
@authentication_classes([BasicAuthentication, SessionAuthentication])
@permission_classes([IsAuthenticated])
@idempotent  # below @api_view: it runs after authentication and permissions
def checkout(request: Request) -> Response:
    """``POST {"cart", "amount"}`` with an ``Idempotency-Key``: one order per key.

    A retry with the same key gets the first answer back (``Idempotent-Replayed:
    true``) and places no second order; the same key with another cart is 422.
    """
    serializer = CheckoutSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    order = Order.objects.create(user=request.user, **serializer.validated_data)
    return Response(
        {"order_id": order.pk, "cart": order.cart, "amount": str(order.amount)},
        status=status.HTTP_201_CREATED,
        headers={"Location": f"/api/orders/{order.pk}"},
    )
