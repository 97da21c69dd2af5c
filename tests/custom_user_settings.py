"""The demo's settings with tests.custom_user's ``Member`` as the user model, on a SQLite
file named by ``STREAMPOD_CUSTOM_USER_DB`` (tests/test_custom_user.py)."""

import os

from streampod_project.settings import *  # noqa: F403
from streampod_project.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.custom_user"]
AUTH_USER_MODEL = "custom_user.Member"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["STREAMPOD_CUSTOM_USER_DB"],
    }
}
