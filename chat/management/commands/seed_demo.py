"""Create the demo users (alice, bob, carol) and an admin when missing."""

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

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
        parser.add_argument(
            "--known-passwords-without-debug",
            action="store_true",
            help="Create the accounts (a superuser among them, every password the demo's) "
            "even with DEBUG off: a demo put online on purpose.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG and not options["known_passwords_without_debug"]:
            # A production server must not get a superuser whose password is in the
            # source (helper "operator13": it was created without a word).
            raise CommandError(
                "DEBUG is off: seed_demo would create a superuser 'admin' and users whose "
                f"password is {DEMO_PASSWORD!r}, known to anyone who reads the code. Create "
                "real accounts with `manage.py createsuperuser`, or pass "
                "--known-passwords-without-debug for a demo put online on purpose."
            )
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
