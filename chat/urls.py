"""Web routes of the chat: the page at ``/``. Sign-in and the API are mounted by
the project (``streampod_project/urls.py``)."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
]
