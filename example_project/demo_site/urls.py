from __future__ import annotations

from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView
from shop import views

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="signup")),
    path("signup/", views.signup, name="signup"),
    path("signup/done/", views.signup_done, name="signup-done"),
    path("api/signup/", views.SignupAPIView.as_view(), name="api-signup"),
    path("api/checkout/", views.checkout, name="api-checkout"),
    path("admin/", admin.site.urls),
]
