from django.urls import include, path

from . import views

urlpatterns = [
    path("e2e/js-client/", views.js_client, name="e2e-js-client"),
    path("e2e/memory/", views.memory, name="e2e-memory"),
    path("", include("streampod_project.urls")),
]
