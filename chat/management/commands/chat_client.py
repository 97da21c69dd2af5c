"""``python manage.py chat_client --url http://127.0.0.1:8000 --user alice``: chat from a
terminal. A client of the server at ``--url``: it never touches this project's database."""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat.terminal import run


class Command(BaseCommand):
    help = (
        "Chat in the terminal with the Python client: incoming messages print live, "
        "'@bob hello' sends. Asks for the password (or pass --token / STREAMPOD_TOKEN)."
    )
    # A client of a remote server: no system checks (they may look at the database).
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server's URL")
        parser.add_argument("--user", help="username to sign in with (asks for the password)")
        parser.add_argument(
            "--token",
            default=os.environ.get("STREAMPOD_TOKEN"),
            help="an API token instead of --user and a password (default: $STREAMPOD_TOKEN)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        username, token = options["user"], options["token"]
        if not username and not token:
            raise CommandError("give --user (you will be asked for the password) or --token")
        password = None
        auth_key = None
        if token:
            auth_key = token if token.startswith("Token ") else f"Token {token}"
        else:
            password = getpass.getpass(f"Password for {username}: ")

        # The client's own INFO lines (connection opened/ended) would clutter the chat;
        # the status lines the chat prints say the same.
        logging.getLogger("streaming.client").setLevel(logging.WARNING)

        def write(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        try:
            status = asyncio.run(
                run(options["url"], username, password=password, auth_key=auth_key, write=write)
            )
        except KeyboardInterrupt:
            status = 0
        if status:
            raise CommandError("chat client stopped", returncode=status)
