from __future__ import annotations

from django import forms


class SignupForm(forms.Form):
    email = forms.EmailField(label="Email address", max_length=150)
