"""The signup page (a Django form) and the signup API endpoint (DRF)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .accounts import sign_up
from .forms import SignupForm


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
