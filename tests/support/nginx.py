"""A real nginx in front of the test servers, configured by deploy/nginx/streampod.conf.

The configuration the deployment docs show is rendered as documented (its
``${STREAMPOD_...}`` placeholders replaced, like ``envsubst`` with the variable list
of the file's header) into a private prefix directory, and run in the foreground:
``nginx -p <dir> -c <dir>/nginx.conf -g 'daemon off;'``. A test may change the value
of a directive the file sets (``overrides={"client_header_timeout": "2s"}``); each
override must match exactly one directive of the file.

Readiness is read from nginx's own log ("start worker process", on stderr), as for
the other servers. nginx is started in a process group of its own, so that stopping
it never leaves a worker behind. Without nginx the tests fail under ``CI=true`` and are
skipped elsewhere (``apt-get install nginx``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.support.servers import (
    IN_CI,
    ROOT,
    DaphneServer,
    RedisServer,
    UvicornServer,
    _Output,
    close_output,
    free_port,
)

TEMPLATE = ROOT / "deploy" / "nginx" / "streampod.conf"
#: The placeholders of the template, as the documented envsubst call names them.
PLACEHOLDERS = ("STREAMPOD_LISTEN", "STREAMPOD_UPSTREAM_1", "STREAMPOD_UPSTREAM_2")


def nginx_binary() -> str:
    """The nginx executable; fail (CI) or skip (elsewhere) when there is none."""
    import pytest

    found = os.environ.get("STREAMPOD_NGINX") or shutil.which("nginx")
    if found is None:
        for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx"):
            if Path(candidate).is_file():
                found = candidate
                break
    if found is None:
        message = "nginx not found (Debian: apt-get install nginx)"
        if IN_CI:
            pytest.fail(message + "; CI=true needs it")
        pytest.skip(message)
    return found


def render(
    values: dict[str, str],
    overrides: dict[str, str] | None = None,
    template: Path = TEMPLATE,
) -> str:
    """The template with its placeholders replaced and ``overrides`` applied."""
    text = template.read_text()
    missing = set(PLACEHOLDERS) - set(values)
    if missing:
        raise ValueError(f"no value for {sorted(missing)}")
    for name, value in values.items():
        # As envsubst does: ${NAME} and $NAME (comments included).
        pattern = re.compile(rf"\$(?:\{{{name}\}}|{name}(?![A-Za-z0-9_]))")
        text, count = pattern.subn(lambda _m, v=value: v, text)
        if count == 0:
            raise ValueError(f"the template has no ${{{name}}}")
    left = re.findall(r"\$\{STREAMPOD_[A-Z0-9_]+\}", text)
    if left:
        raise ValueError(f"placeholders without a value: {left}")
    for directive, value in (overrides or {}).items():
        pattern = re.compile(rf"^(\s*{re.escape(directive)}\s+)[^;\n]+;", re.MULTILINE)
        text, count = pattern.subn(lambda m, v=value: f"{m.group(1)}{v};", text)
        if count != 1:
            raise ValueError(f"{directive}: {count} directives in {template.name}, expected 1")
    return text


class NginxServer:
    """nginx on 127.0.0.1 on a free port, proxying to ``upstreams`` (two "host:port")."""

    name = "nginx"

    def __init__(
        self,
        upstreams: list[str],
        overrides: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        if len(upstreams) != 2:
            raise ValueError("deploy/nginx/streampod.conf names two upstream servers")
        self.upstreams = upstreams
        self.overrides = overrides or {}
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="streampod-nginx-"))
        self.proc: subprocess.Popen[str] | None = None
        self.output: _Output | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/websocket/"

    @property
    def conf_path(self) -> Path:
        return self.dir / "nginx.conf"

    def write_conf(self) -> Path:
        values = {
            "STREAMPOD_LISTEN": f"127.0.0.1:{self.port}",
            "STREAMPOD_UPSTREAM_1": self.upstreams[0],
            "STREAMPOD_UPSTREAM_2": self.upstreams[1],
        }
        self.conf_path.write_text(render(values, self.overrides))
        return self.conf_path

    def command(self, *extra: str) -> list[str]:
        return [nginx_binary(), "-p", f"{self.dir}/", "-c", str(self.conf_path), *extra]

    def check(self) -> str:
        """``nginx -t`` on the rendered configuration: its output (raises if invalid)."""
        self.write_conf()
        result = subprocess.run(
            self.command("-t"), capture_output=True, text=True, timeout=30, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{result.stderr}")
        return result.stderr

    def start(self, timeout: float = 30) -> NginxServer:
        self.write_conf()
        self.proc = subprocess.Popen(
            self.command("-g", "daemon off;"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: workers go with it
        )
        self.output = _Output(self.proc.stdout)
        if not self.output.wait_for("start worker process ", timeout):
            out = self.output.text()
            self.stop()
            raise RuntimeError(f"nginx did not start on port {self.port}:\n{out}")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        """The worker processes (children of the master)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def open_fds(self) -> int:
        """Descriptors held by the workers (where the connections are)."""
        return sum(fd_count(pid) for pid in self.worker_pids())

    def rss_kb(self) -> int:
        return sum(rss_kb(pid) for pid in [self.pid, *self.worker_pids()])

    def logs(self) -> str:
        return self.output.text() if self.output else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # Fast shutdown: the master stops its workers, then exits. Until it is reaped
            # its pid names its process group, so the group is nginx's alone.
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        close_output(self.proc, self.output)

    def __enter__(self) -> NginxServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def fd_count(pid: int) -> int:
    """Open file descriptors of a process (``/proc/<pid>/fd``)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    """Resident memory of a process, in KiB (``VmRSS``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def count_lines(output: _Output | None, needle: str) -> int:
    """How many lines of a process's output contain ``needle``."""
    if output is None:
        return 0
    with output._cond:
        return sum(needle in line for line in output.lines)


def wait_lines(outputs: list[_Output], needle: str, count: int, timeout: float) -> bool:
    """Wait until the lines containing ``needle`` in ``outputs`` add up to ``count``
    (each output's thread signals its new lines; ``timeout`` is a failure guard)."""
    deadline = time.monotonic() + timeout
    while True:
        if sum(count_lines(out, needle) for out in outputs) >= count:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        # Wait on any one output's condition: new lines of the others are counted on
        # the next turn, which this one's line (or the guard) brings.
        first = outputs[0]
        with first._cond:
            first._cond.wait(min(remaining, 0.2))


#: The line uvicorn logs when it accepts a WebSocket (its --log-level info).
ACCEPTED = '"WebSocket /websocket/" [accepted]'


def start_all(*servers: Any) -> None:
    """Start ``servers`` side by side (each waits for its own ready line)."""
    with ThreadPoolExecutor(len(servers)) as pool:
        for future in [pool.submit(srv.start) for srv in servers]:
            future.result()


@contextlib.contextmanager
def nginx_cluster(
    overrides: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    server_class: type[DaphneServer] = UvicornServer,
) -> Iterator[tuple[NginxServer, RedisServer, DaphneServer, DaphneServer]]:
    """A private redis-server, two servers sharing it (uvicorn: production), and nginx
    in front of them with deploy/nginx/streampod.conf: (nginx, redis, a, b). Every
    process is stopped on the way out (a test may have killed a server already)."""
    with contextlib.ExitStack() as stack:
        rs = stack.enter_context(RedisServer())
        server_env = {"REDIS_URL": rs.url, **(env or {})}
        a, b = server_class(env=server_env), server_class(env=server_env)
        stack.callback(b.stop)
        stack.callback(a.stop)
        start_all(a, b)
        nginx = NginxServer([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], overrides)
        stack.enter_context(nginx)
        yield nginx, rs, a, b
