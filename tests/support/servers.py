"""Real servers for end-to-end tests: daphne processes on 127.0.0.1 and redis-server.

Readiness is read from the process's own output ("Listening on ..." / "Ready to
accept connections"), never guessed with a sleep. Every process is stopped by the
fixture that started it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


class _Output:
    """Collects a process's output lines in a thread; lets a test wait for one."""

    def __init__(self, stream: Any) -> None:
        self.lines: deque[str] = deque(maxlen=2000)
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for raw in iter(stream.readline, ""):
            with self._cond:
                self.lines.append(raw.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait_for(self, needle: str, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: self._closed or any(needle in line for line in self.lines), timeout
            ) and any(needle in line for line in self.lines)

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)


def database_url(db: dict[str, Any]) -> str:
    """``DATABASE_URL`` for a server on the database ``db`` (a ``DATABASES`` entry): the
    test process's own, i.e. pytest-django's test database once it is set up (SQLite, or
    PostgreSQL when the tests run with a ``postgres://`` ``DATABASE_URL``: ``make test-pg``)."""
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    if db["ENGINE"].endswith("postgresql"):
        user = quote(db.get("USER") or "", safe="")
        password = quote(db.get("PASSWORD") or "", safe="")
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        port = f":{db['PORT']}" if db.get("PORT") else ""
        return f"postgres://{auth}{db.get('HOST') or ''}{port}/{quote(db['NAME'], safe='')}"
    raise ValueError(f"the end-to-end servers run on SQLite or PostgreSQL, not {db['ENGINE']}")


def close_output(proc: subprocess.Popen[str] | None, output: _Output | None) -> None:
    """Once ``proc`` has exited: let its reader thread take the last lines, then close its
    pipe here, not in the garbage collector (a ResourceWarning in whichever test runs
    then)."""
    if proc is None or proc.poll() is None:
        return
    if output is not None:
        output._thread.join(5)
    if proc.stdout is not None and not proc.stdout.closed:
        proc.stdout.close()


def wait_or_kill(proc: subprocess.Popen[str], timeout: float) -> None:
    """Wait ``timeout`` for ``proc`` to exit after it was asked to; then kill it."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def spawn_logged(command: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], _Output]:
    """Start ``command`` in the project's root, its stdout and stderr read by an ``_Output``."""
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, _Output(proc.stdout)


class DaphneServer:
    """``python -m daphne streampod_project.asgi:application`` on a free port."""

    def __init__(
        self,
        env: dict[str, str] | None = None,
        port: int | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.env = env or {}
        self.args = args or []  # extra server options, before the application
        self.proc: subprocess.Popen[str] | None = None
        self.output: _Output | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/websocket/"

    def start(self, timeout: float = 30) -> DaphneServer:
        from django.conf import settings

        env = dict(os.environ)
        env["DATABASE_URL"] = database_url(settings.DATABASES["default"])
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "tests.e2e_settings",
                "DJANGO_DEBUG": "0",
                # Debug off needs a key of its own (the settings refuse the public one).
                "DJANGO_SECRET_KEY": "streampod-e2e-" + "k" * 50,
                "PYTHONUNBUFFERED": "1",
                "REDIS_URL": "",
                # The browser tests sign in through the form many times a minute, from one
                # address; tests/test_rest_limits.py checks the sign-in throttle itself.
                "STREAMPOD_THROTTLE_SIGN_IN": "off",
            }
        )
        env.update(self.env)
        self.proc, self.output = spawn_logged(self.command(), env)
        if not self.output.wait_for(self.ready_line, timeout):
            out = self.output.text()
            self.stop()
            raise RuntimeError(f"{self.name} did not start on port {self.port}:\n{out}")
        return self

    name = "daphne"

    @property
    def ready_line(self) -> str:
        return f"Listening on TCP address 127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        max_bytes = 65536 + 1024
        return [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-v",
            "1",
            "--websocket-max-message-size",
            str(max_bytes),
            *self.args,
            "streampod_project.asgi:application",
        ]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._close_output()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._close_output()

    def _close_output(self) -> None:
        close_output(self.proc, self.output)

    def logs(self) -> str:
        return self.output.text() if self.output else ""

    def __enter__(self) -> DaphneServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


#: The WebSocket protocol the tests' uvicorn runs: Streampod's (docs/deployment.md), or
#: another ``--ws`` value (``websockets-sansio``, uvicorn's own) from STREAMPOD_TEST_UVICORN_WS.
UVICORN_WS = os.environ.get("STREAMPOD_TEST_UVICORN_WS", "streaming.uvicorn_ws:WebSocketProtocol")


class UvicornServer(DaphneServer):
    """``python -m uvicorn streampod_project.asgi:application``: the production server."""

    name = "uvicorn"

    @property
    def ready_line(self) -> str:
        return f"Uvicorn running on http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "info",
            "--ws-max-size",
            str(65536 + 1024),
            "--http",
            "h11",
            "--ws",
            UVICORN_WS,
            *self.args,
            "streampod_project.asgi:application",
        ]


#: The ASGI servers Streampod supports, by name.
SERVERS: dict[str, type[DaphneServer]] = {"daphne": DaphneServer, "uvicorn": UvicornServer}


class RedisServer:
    """A private redis-server on its own port (for fault tests that stop and restart it)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.dir = tempfile.mkdtemp(prefix="streampod-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output = self.output = _Output(self.proc.stdout)
        if not output.wait_for("Ready to accept connections", timeout):
            self.stop()
            raise RuntimeError(f"redis-server did not start:\n{output.text()}")
        return self

    output: _Output | None = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            wait_or_kill(self.proc, 10)
        close_output(self.proc, self.output)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


#: The tests' database on the machine's Redis: not 0, where a developer's own data (or a
#: deployment's) usually is. Redis pub/sub ignores database numbers; the tests' channel
#: names are their own (random group names, or a prefix of their own).
TEST_REDIS_DB = 13
DEFAULT_TEST_REDIS_URL = f"redis://127.0.0.1:6379/{TEST_REDIS_DB}"


def shared_redis_url() -> str:
    """The machine's Redis: ``STREAMPOD_TEST_REDIS_URL``, else database 13 of 127.0.0.1:6379."""
    return os.environ.get("STREAMPOD_TEST_REDIS_URL") or DEFAULT_TEST_REDIS_URL


def require_redis(url: str | None = None) -> str:
    """The Redis URL if it answers; otherwise fail under CI=true, skip elsewhere."""
    import pytest
    import redis

    url = url or shared_redis_url()
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:
        message = f"Redis at {url} is not reachable ({exc!r})"
        if IN_CI:
            pytest.fail(message + "; CI=true needs it")
        pytest.skip(message)
    return url


def child_pids(pid: int) -> list[int]:
    """The direct children of a process (uvicorn ``--workers``' worker processes)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(each) for each in path.read_text().split()]


def socket_owner(pids: list[int], server_port: int, client_port: int) -> int | None:
    """Which of ``pids`` holds the server side of the TCP connection from 127.0.0.1
    ``client_port`` to ``server_port`` (``/proc/net/tcp`` names its inode, the process's
    ``/proc/<pid>/fd`` links it); None if none does."""
    wanted = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    inode = None
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if (fields[1], fields[2]) == wanted:
                inode = fields[9]
                break
    if inode is None:
        return None
    link = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == link:
                    return pid
            except OSError:
                continue
    return None


class PostgresServer:
    """A private PostgreSQL cluster (``initdb``) on its own port, to stop and start again
    like a real database restart without touching the machine's server.

    PostgreSQL refuses to run as root: as root, its programs run as the ``postgres``
    user (``runuser``). Readiness is its log line "ready to accept connections". Trust
    authentication on 127.0.0.1 for the user ``postgres``.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="streampod-pg-"))
        self.data = self.dir / "data"
        self.proc: subprocess.Popen[str] | None = None
        self.output: _Output | None = None

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    @staticmethod
    def bin_dir() -> Path | None:
        """The directory of ``initdb`` and ``postgres`` (Debian's versioned one)."""
        found = shutil.which("initdb")
        if found:
            return Path(found).parent
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        return versions[-1].parent if versions else None

    def _as_postgres(self, *command: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *command]
        return list(command)

    def init(self) -> PostgresServer:
        bin_dir = self.bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL's initdb is not installed")
        if os.geteuid() == 0:
            shutil.chown(self.dir, user="postgres")
        subprocess.run(
            self._as_postgres(
                str(bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres",
                "--auth=trust", "--no-sync",
            ),
            check=True, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        return self

    def start(self, timeout: float = 60) -> PostgresServer:
        bin_dir = self.bin_dir()
        assert bin_dir is not None
        if not self.data.exists():
            self.init()
        self.proc = subprocess.Popen(
            self._as_postgres(
                str(bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
            ),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.output = _Output(self.proc.stdout)
        if not self.output.wait_for("ready to accept connections", timeout):
            out = self.output.text()
            self.stop()
            raise RuntimeError(f"postgres did not start on port {self.port}:\n{out}")
        return self

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open connections are cut, as in a restart."""
        if self.proc is not None and self.proc.poll() is None:
            # To the postmaster itself (runuser does not pass signals on): its pid is the
            # first line of postmaster.pid.
            pid_file = self.data / "postmaster.pid"
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)
            except (OSError, ValueError, IndexError):
                self.proc.send_signal(signal.SIGINT)
            wait_or_kill(self.proc, 30)
        close_output(self.proc, self.output)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
