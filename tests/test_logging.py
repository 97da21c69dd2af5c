"""The project's logging (streampod_project/settings.py ``LOGGING``): a 500 reaches the
log with its traceback (e2e: tests/e2e/test_metrics_e2e.py) and still reaches ``ADMINS``
by mail, as Django's default configuration sends it."""

import pytest
from django.core import mail
from django.test import Client
from django.urls import path


def boom(request):
    raise RuntimeError("boom")


urlpatterns = [path("boom/", boom)]


@pytest.mark.django_db
def test_a_500_is_logged_and_mailed_to_admins(settings, caplog):
    """Helper "reviewer13": the logger that puts 500s in the log did not propagate, so
    Django's mail to ADMINS was no longer sent."""
    settings.ROOT_URLCONF = __name__
    settings.ADMINS = [("ops", "ops@example.com")]
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.DEBUG = False
    with caplog.at_level("ERROR", logger="django.request"):
        response = Client(raise_request_exception=False).get("/boom/")
    assert response.status_code == 500
    assert len(mail.outbox) == 1
    assert "RuntimeError" in caplog.text
