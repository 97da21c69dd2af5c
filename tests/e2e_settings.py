"""Settings of the daphne processes that end-to-end tests start: the project's, plus
the test endpoints of ``tests.e2e_app``."""

from streampod_project.settings import *  # noqa: F403
from streampod_project.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.e2e_app"]
ROOT_URLCONF = "tests.e2e_app.urls"
