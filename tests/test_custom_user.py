"""A custom user model without an ``is_active`` field, with a UUID primary key (a review's
probe): saving a user raised ``FieldError`` in Streampod's ``pre_save`` receiver (every
``create_user``, every login's ``last_login``), and the re-check raised on every round,
so it never closed anything. Run in a subprocess: the user model is chosen at setup."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.support.servers import ROOT

SCRIPT = textwrap.dedent(
    """
    import django
    django.setup()
    from django.core.management import call_command
    call_command("migrate", run_syncdb=True, verbosity=0)
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.models import Session
    from django.test import Client
    from streaming import credentials

    member = get_user_model().objects.create_user("a@example.com", "pw-123456789")
    client = Client()
    client.force_login(member)  # saves last_login: the pre_save receiver runs
    key = client.cookies["sessionid"].value
    member.set_password("pw-987654321")
    member.save()  # a password change, seen by the receivers
    print("AFTER PASSWORD", credentials.session_still_valid(key, member.pk))
    client.force_login(member)
    key = client.cookies["sessionid"].value
    found = credentials.standing([member.pk], {key: member.pk}, [])
    print("HOLDS", member.pk in found.active, key in found.sessions)
    Session.objects.filter(session_key=key).delete()
    found = credentials.standing([member.pk], {key: member.pk}, [])
    print("DELETED", member.pk in found.active, key in found.sessions)
    """
)


def test_a_user_model_without_is_active_is_saved_and_rechecked(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.custom_user_settings",
        "STREAMPOD_CUSTOM_USER_DB": str(tmp_path / "db.sqlite3"),
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "AFTER PASSWORD False" in done.stdout, done.stdout  # the old hash no longer holds
    assert "HOLDS True True" in done.stdout, done.stdout
    assert "DELETED True False" in done.stdout, done.stdout
