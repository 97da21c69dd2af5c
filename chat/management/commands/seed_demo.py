"""Create the demo users (alice, bob, carol) and an admin when missing."""

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

DEMO_PASSWORD = "streampod"
DEMO_USERS = [("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol")]


class Command(BaseCommand):
    help = "Create demo users alice, bob, carol and an admin account when missing."

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        for username, first_name in DEMO_USERS:
            if not User.objects.filter(username=username).exists():
                User.objects.create_user(username, password=DEMO_PASSWORD, first_name=first_name)
        if not User.objects.filter(username="admin").exists():
            User.objects.create_superuser("admin", "admin@example.com", DEMO_PASSWORD)
        if settings.DEBUG:
            self.stdout.write(
                "Demo accounts (password 'streampod'): alice, bob, carol; admin at /admin/ "
                "(admin / streampod).\nOpen http://127.0.0.1:8000/"
            )
