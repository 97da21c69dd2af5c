"""``python -m bench.churn``: server RSS per 1,000 authenticated open/close cycles.

Streampod against the plain Channels baseline, each under daphne and under uvicorn
(the same server processes as ``make bench``: :mod:`bench.servers`, :mod:`bench.client`).
Every socket authenticates as a Django user, the way each framework is deployed:

* Streampod (:mod:`bench.asgi`): ``Authorization: Token <key>`` (DRF token) in the
  handshake, read by ``StreamingAuthMiddlewareStack``;
* Channels (:mod:`bench.channels_asgi`): the Django session cookie, read by
  ``AuthMiddlewareStack``.

The servers share one SQLite file made here (``BENCH_DATABASE_URL``), with ``--users``
users (each comes back many times: per-user and per-connection growth both show).
Sockets are opened ``--batch`` at a time; each waits for its server's "ready" and is
closed. After ``--warm-up`` cycles the server's RSS (``/proc/<pid>/status``, nothing
forced: garbage the collector has not reached yet counts) is read every 1,000 cycles.

    python -m bench.churn                       # 2,000 warm-up, 6,000 measured, 4 rows
    python -m bench.churn --cycles 3000 --only streampod,channels
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .client import open_conn
from .run import raise_fd_limit
from .servers import CHANNELS, STREAMPOD, STREAMPOD_UVICORN, Contender, ServerProcess

CHANNELS_UVICORN = dataclasses.replace(
    CHANNELS, key="channels_uvicorn", label="Channels baseline (uvicorn)", server="uvicorn"
)
CONTENDERS = {c.key: c for c in (STREAMPOD, CHANNELS, STREAMPOD_UVICORN, CHANNELS_UVICORN)}


@dataclasses.dataclass
class Credentials:
    tokens: list[str]  # "Token <key>", per user
    sessions: list[str]  # session keys, per user

    def headers(self, contender: Contender, n: int) -> dict[str, str]:
        i = n % len(self.tokens)
        if contender.dialect_name == "streampod":
            return {"Authorization": self.tokens[i]}
        return {"Cookie": f"sessionid={self.sessions[i]}"}


def make_database(
    path: Path, users: int, settings: str = "bench.settings", sessions: bool = True
) -> Credentials:
    """Migrate a SQLite file (with the apps of ``settings``) and give it ``users`` users,
    each with a token and (``sessions``) a session."""
    os.environ["DJANGO_SETTINGS_MODULE"] = settings
    os.environ["BENCH_DATABASE_URL"] = os.environ["DATABASE_URL"] = f"sqlite:///{path}"
    import django

    django.setup()
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
    )
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    call_command("migrate", verbosity=0, interactive=False)
    User = get_user_model()
    made = User.objects.bulk_create([User(username=f"churn-{n}") for n in range(users)])
    tokens = Token.objects.bulk_create([Token(user=u, key=Token.generate_key()) for u in made])
    keys: list[str] = []
    for user in made if sessions else []:
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        keys.append(str(session.session_key))
    return Credentials([f"Token {t.key}" for t in tokens], keys)


async def cycles(
    proc: ServerProcess, creds: Credentials, start: int, count: int, batch: int
) -> int:
    """``count`` sockets, ``batch`` at a time: open (authenticated), wait for ready, close.

    Returns how many failed (refused or timed out handshakes: a loaded machine).
    """
    contender = proc.contender
    dialect = contender.dialect()

    async def one(n: int) -> None:
        conn = await open_conn(
            dialect, proc.base, n % 1000 + 1, 0, headers=creds.headers(contender, n)
        )
        await conn.ws.close()

    failed = 0
    for first in range(start, start + count, batch):
        ends = range(first, min(first + batch, start + count))
        results = await asyncio.gather(*(one(n) for n in ends), return_exceptions=True)
        failed += sum(1 for r in results if isinstance(r, Exception))
    return failed


async def measure(
    contender: Contender, creds: Credentials, db_url: str, args: argparse.Namespace
) -> dict[str, Any]:
    proc = ServerProcess(contender, {"BENCH_DATABASE_URL": db_url}).start()
    try:
        started = time.monotonic()
        failed = await cycles(proc, creds, 0, args.warm_up, args.batch)
        rss = [proc.rss_kb()]
        done = args.warm_up
        while done < args.warm_up + args.cycles:
            step = min(1000, args.warm_up + args.cycles - done)
            failed += await cycles(proc, creds, done, step, args.batch)
            done += step
            rss.append(proc.rss_kb())
        measured = done - args.warm_up
        return {
            "contender": contender,
            "rss": rss,
            "per_1000_kb": (rss[-1] - rss[0]) * 1000 / measured,
            "seconds": time.monotonic() - started,
            "failed": failed,
            "log": proc.output() if proc.tail and proc.tail.errors else "",
        }
    finally:
        proc.stop()


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"RSS of the server over {args.cycles:,} authenticated open/close cycles "
        f"(after {args.warm_up:,} of warm-up; {args.users} users; {args.batch} at a time)",
        "",
        "| contender | server | RSS after warm-up (MB) | growth per 1,000 cycles (MB) "
        "| RSS every 1,000 cycles (MB, from the warm-up on) | failed cycles |",
        "|---|---|---:|---:|---|---:|",
    ]
    for r in results:
        c = r["contender"]
        series = " ".join(f"{kb / 1024:.1f}" for kb in r["rss"])
        lines.append(
            f"| {c.label} | {c.server} | {r['rss'][0] / 1024:.1f} "
            f"| {r['per_1000_kb'] / 1024:+.2f} | {series} | {r['failed']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.churn", description=__doc__)
    parser.add_argument("--cycles", type=int, default=6000, help="measured cycles (6,000)")
    parser.add_argument("--warm-up", type=int, default=2000, help="cycles first (2,000)")
    parser.add_argument("--batch", type=int, default=100, help="sockets at a time (100)")
    parser.add_argument("--users", type=int, default=200, help="distinct users (200)")
    parser.add_argument(
        "--only", default=",".join(CONTENDERS), help=f"comma-separated, of {list(CONTENDERS)}"
    )
    args = parser.parse_args(argv)
    chosen = [CONTENDERS[key] for key in args.only.split(",") if key]
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="streampod-churn-"))
    try:
        path = workdir / "churn.sqlite3"
        creds = make_database(path, args.users)
        results = []
        for contender in chosen:
            print(f"{contender.label}...", file=sys.stderr, flush=True)
            result = asyncio.run(measure(contender, creds, f"sqlite:///{path}", args))
            if result["log"]:
                print(result["log"], file=sys.stderr)
            results.append(result)
        print(table(results, args))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
