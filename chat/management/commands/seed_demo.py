"""Create the demo users (alice, bob, carol) and an admin when missing."""

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from chat.demo import ADMIN_USERNAME, DEMO_PASSWORD, DEMO_USERS


class Command(BaseCommand):
    help = "Create demo users alice, bob, carol and an admin account when missing."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--port",
            type=int,
            default=8000,
            help="The port the demo is served on, for the URL printed (`make run PORT=...`).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        for username, first_name in DEMO_USERS:
            if not User.objects.filter(username=username).exists():
                User.objects.create_user(username, password=DEMO_PASSWORD, first_name=first_name)
        if not User.objects.filter(username=ADMIN_USERNAME).exists():
            User.objects.create_superuser(ADMIN_USERNAME, "admin@example.com", DEMO_PASSWORD)
        # Known passwords are for a developer's machine only: say them only with DEBUG.
        if settings.DEBUG:
            self.stdout.write(
                f"Demo accounts (password '{DEMO_PASSWORD}'): "
                + ", ".join(name for name, _ in DEMO_USERS)
                + f"; admin at /admin/ ({ADMIN_USERNAME} / {DEMO_PASSWORD}).\n"
                f"Open http://127.0.0.1:{options['port']}/"
            )
