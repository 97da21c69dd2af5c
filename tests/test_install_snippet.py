"""The README's "Using `streaming` in your own project", followed to the letter (issue 13).

In a temporary folder: a fresh virtualenv, `pip install` of this repository with the
`uvicorn` extra (the README's command), `django-admin startproject myproject`, the README's
blocks as written (the end of `myproject/settings.py`, `myproject/asgi.py`,
`myproject/urls.py`, and the minimal endpoint's `myapp/protocol.py` and `myapp/endpoints.py`
in an app made by `startapp`), then `check`, `migrate`, a server (uvicorn, and `runserver`,
which must be daphne's), and the Python client of that virtualenv talking to the endpoint.

The blocks are read from README.md, so this fails when the README drifts. It needs the
package index (pip downloads what the local wheel cache lacks): a minute or two.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from tests.support.nginx import rss_kb
from tests.support.servers import ROOT, _Output, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.install, pytest.mark.timeout(900)]

SECTION = "## Using `streaming` in your own project"
PASSWORD = "install-snippet-pw"


# -- the README -------------------------------------------------------------------------


def readme() -> str:
    return (ROOT / "README.md").read_text()


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else None]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block, in order."""
    return [(lang, body) for lang, body in re.findall(r"^```(\w*)\n(.*?)^```$", text, re.M | re.S)]


def block_for(text: str, path: str) -> str:
    """The one python block whose first line is ``# <path>`` (a comment may follow)."""
    found = [
        body
        for lang, body in code_blocks(text)
        if lang == "python" and re.match(rf"# {re.escape(path)}\b", body)
    ]
    assert len(found) == 1, f"README: {len(found)} python blocks start with '# {path}'"
    return found[0]


def pip_install_args(text: str, source: Path) -> list[str]:
    """The arguments of the section's `pip install ...` line, the clone's path replaced."""
    lines = [
        line
        for lang, body in code_blocks(text)
        if lang == "sh"
        for line in body.splitlines()
        if line.startswith("pip install ")
    ]
    assert len(lines) == 1, lines
    words = shlex.split(lines[0], comments=True)
    assert words[:2] == ["pip", "install"], words
    return [word.replace("/path/to/streampod", str(source)) for word in words[2:]]


def shipped_files(text: str) -> list[str]:
    """Files the section says the package ships: `streaming/...` paths with a suffix."""
    return sorted(set(re.findall(r"`(streaming/[\w/.-]+\.\w+)`", text)))


# -- the temporary install ----------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a newcomer's shell: none of this suite's Django or Redis settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "STREAMPOD_", "PYTEST_"))
        and key not in ("REDIS_URL", "DATABASE_URL", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


def run(args: list[str], cwd: Path, timeout: float = 120, **env: str) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=clean_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{shlex.join(map(str, args))} failed:\n{done.stdout[-6000:]}"
    return done.stdout


def copy_source(dest: Path) -> Path:
    """This working tree as a clone would hold it (tracked and new files, nothing ignored),
    so that pip builds in a copy and leaves no build/ behind in the repository."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


class Site:
    """The virtualenv and the project made in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.venv = root / "venv"
        self.bin = self.venv / "bin"
        self.python = self.bin / "python"
        self.project = root / "myproject"
        self.pip_output = ""
        self.check_output = ""
        self.user_id = 0

    def manage(self, *args: str, timeout: float = 120) -> str:
        return run([self.python, "manage.py", *args], cwd=self.project, timeout=timeout)

    def site_packages(self) -> Path:
        out = run(
            [self.python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            cwd=self.root,
        )
        return Path(out.strip())


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Site:
    text = section(readme(), SECTION)
    site = Site(tmp_path_factory.mktemp("newcomer"))
    source = copy_source(site.root / "streampod")

    # The venv's own pip would do, but the suite's (newer, and without compiling every
    # module to bytecode) installs the same in a third of the time on a busy machine.
    run([sys.executable, "-m", "venv", "--without-pip", site.venv], cwd=site.root)
    # -v: pip shows the build backend's output, where setuptools' warnings are.
    site.pip_output = run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            site.python,
            "install",
            "-v",
            "--no-compile",
            *pip_install_args(text, source),
        ],
        cwd=site.root,
        timeout=600,
    )

    run([site.bin / "django-admin", "startproject", "myproject"], cwd=site.root)
    package = site.project / "myproject"
    settings = package / "settings.py"
    settings.write_text(settings.read_text() + "\n\n" + block_for(text, "myproject/settings.py"))
    (package / "asgi.py").write_text(block_for(text, "myproject/asgi.py"))
    (package / "urls.py").write_text(block_for(text, "myproject/urls.py"))

    # "python manage.py startapp myapp, add "myapp" to INSTALLED_APPS, and write
    # myapp/protocol.py and myapp/endpoints.py as in A minimal endpoint."
    site.manage("startapp", "myapp")
    minimal = section(readme(), "## A minimal endpoint")
    for name in ("protocol.py", "endpoints.py"):
        (site.project / "myapp" / name).write_text(block_for(minimal, f"myapp/{name}"))
    with settings.open("a") as file:
        file.write('\nINSTALLED_APPS += ["myapp"]\n')

    site.check_output = site.manage("check", "--fail-level", "WARNING")
    site.manage("migrate", "--noinput")
    site.manage("collectstatic", "--noinput")
    out = site.manage(
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model; "
        f"print('USER', get_user_model().objects.create_user('alice', password={PASSWORD!r}).pk)",
    )
    site.user_id = int(re.search(r"^USER (\d+)$", out, re.M).group(1))
    return site


# -- the tests ------------------------------------------------------------------------------


def test_pip_install_prints_no_setuptools_deprecation(site):
    assert "Successfully installed" in site.pip_output
    assert "SetuptoolsDeprecationWarning" not in site.pip_output, site.pip_output[-6000:]


def test_the_installed_package_holds_what_the_readme_says(site):
    text = section(readme(), SECTION)
    package = site.site_packages() / "streaming"
    files = shipped_files(text)
    assert "streaming/static/streaming/streampod.js" in files, files
    for name in files:
        assert (package.parent / name).is_file(), f"README says it ships {name}; not installed"
    assert (package / "py.typed").is_file()
    assert (package / "client" / "__init__.py").is_file()
    # "Its only templates are the Django admin's live metrics page", and "not the demo".
    templates = package / "templates"
    shipped = sorted(p.relative_to(package.parent).as_posix() for p in templates.rglob("*.html"))
    assert shipped == [
        "streaming/templates/streaming/admin_index.html",
        "streaming/templates/streaming/admin_live.html",
    ]
    assert all(f"`{name.rsplit('/', 1)[1]}`" in text or f"`{name}`" in text for name in shipped)
    for demo in ("chat", "streampod_project", "tests", "bench"):
        assert not (package.parent / demo).exists(), f"{demo} installed with streaming"


def test_the_uvicorn_extra_brings_uvloop(site):
    out = run([site.python, "-c", "import uvicorn, uvloop; print('fast parts ok')"], cwd=site.root)
    assert "fast parts ok" in out


def test_manage_py_check_passes_with_the_snippet(site):
    assert "System check identified no issues" in site.check_output, site.check_output


TALK = textwrap.dedent(
    """
    import asyncio
    import sys

    from myapp.protocol import MyChatMessage
    from streaming.client import Client


    async def main(url, user_id, password):
        async with Client(url) as client:
            await client.sign_in("alice", password)
            await client.open_streaming_connection()
            await client.chat.send_stream_message(MyChatMessage(recipient_id=user_id, text="Hi"))
            async with asyncio.timeout(20):
                async for message in client.chat.stream:
                    print("GOT", type(message).__name__, message.recipient_id, message.text,
                          "FROM", message.sender_id)
                    return


    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
    """
)


def serve(site: Site, server: str, port: int) -> tuple[subprocess.Popen[str], _Output, str]:
    if server == "uvicorn":
        # As docs/deployment.md serves it, on this machine's loopback.
        args = [
            site.bin / "uvicorn",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ws-max-size",
            "66560",
            "--http",
            "h11",
            "--ws",
            "streaming.uvicorn_ws:WebSocketProtocol",
            "myproject.asgi:application",
        ]
        ready = f"Uvicorn running on http://127.0.0.1:{port}"
    else:
        args = [site.python, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"]
        # Printed just before daphne listens (its own "Listening" line is not logged).
        ready = "Quit the server with CONTROL-C."
    proc = subprocess.Popen(
        [str(a) for a in args],
        cwd=site.project,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, _Output(proc.stdout), ready


def stop(proc: subprocess.Popen[str], output: _Output) -> None:
    """End a server from :func:`serve` and its output reader."""
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    if proc.stdout is not None:
        output._thread.join(5)
        proc.stdout.close()


def get_when_listening(
    url: str, proc: subprocess.Popen[str], output: _Output, timeout: float = 30
) -> httpx.Response:
    """GET ``url`` once the server accepts connections (its socket is bound a moment after
    the line it prints): a state, polled, with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=timeout)
        except httpx.ConnectError:
            assert proc.poll() is None, f"the server stopped:\n{output.text()}"
            assert time.monotonic() < deadline, f"nothing listens:\n{output.text()}"
            time.sleep(0.1)


def test_the_documented_uvicorn_bounds_a_request_head(site):
    """One connection sends a request head that never ends (1 KB header lines) to uvicorn as
    docs/deployment.md serves it, with the ``uvicorn`` extra installed.

    Seen: the extra brought httptools, which uvicorn picks by itself, and httptools keeps
    every header line of an unfinished head: 192 MB of headers took the server from 30 to
    262 MB of RSS, on one connection that never finished its request.
    Expected: the head is refused (400, the connection closed) and the server does not
    grow with it: h11 (``--http h11``) bounds an unfinished request at 16 KiB."""
    import socket

    port = free_port()
    proc, output, ready = serve(site, "uvicorn", port)
    try:
        assert output.wait_for(ready, 60), f"uvicorn did not start:\n{output.text()}"
        get_when_listening(f"http://127.0.0.1:{port}/static/streaming/streampod.js", proc, output)
        rss_before = rss_kb(proc.pid)
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sent = 0
        line = b"X-Pad: " + b"a" * 1000 + b"\r\n"
        with sock:
            try:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                while sent < 8 << 20:  # stops at the first refusal (a reset, or a timeout)
                    sock.sendall(line)
                    sent += len(line)
            except OSError:
                pass
            answer = b""
            try:
                while chunk := sock.recv(4096):
                    answer += chunk
            except OSError:
                pass
        # What the server holds, not what the client got into the kernel's buffers before
        # the refusal reached it (2.6 MB once, on a loaded machine).
        grown = rss_kb(proc.pid) - rss_before
        assert grown < 4096, f"the server grew by {grown} KiB for one request head ({sent} sent)"
        assert answer.startswith(b"HTTP/1.1 400") or not answer, answer[:200]
    finally:
        stop(proc, output)


@pytest.mark.parametrize("server", ["uvicorn", "runserver"])
def test_the_endpoint_answers_the_python_client(site, server):
    (site.project / "talk.py").write_text(TALK)
    port = free_port()
    proc, output, ready = serve(site, server, port)
    try:
        assert output.wait_for(ready, 60), f"{server} did not start:\n{output.text()}"
        url = f"http://127.0.0.1:{port}/"
        js = get_when_listening(f"{url}static/streaming/streampod.js", proc, output)
        # Served under either server: WhiteNoise under uvicorn (seen, a newcomer's try:
        # 404 under uvicorn, the README's settings had no static files server).
        assert js.status_code == 200 and "WebSocket" in js.text
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert health.status_code == 200, health.text
        if server == "runserver":
            # runserver is daphne's ("daphne" before staticfiles), and serves static files
            # with DEBUG on, the browser client among them.
            assert "Starting ASGI/Daphne" in output.text(), output.text()
            assert js.status_code == 200 and "WebSocket" in js.text
        out = run(
            [site.python, "talk.py", url, str(site.user_id), PASSWORD], cwd=site.project, timeout=60
        )
        assert f"GOT MyChatMessage {site.user_id} Hi FROM {site.user_id}" in out, out
        # The README's LOGGING shows Streampod's lines (seen, a newcomer's try: none were,
        # "graceful shutdown installed" among them, which docs/deployment.md says to look for).
        assert output.wait_for("graceful shutdown installed", 30), output.text()
        # The token view is throttled (seen, a newcomer's try: DRF's obtain_auth_token, as
        # the README had it, took 15 wrong passwords through nginx, and would take any
        # number): 10 a minute per address, the Python client's sign-in above among them.
        statuses = []
        for _ in range(11):
            guess = httpx.post(
                f"{url}api/auth/token/", data={"username": "alice", "password": "guess"}
            )
            statuses.append(guess.status_code)
            if guess.status_code == 429:
                assert int(guess.headers["Retry-After"]) > 0
                break
        assert statuses == [400] * 9 + [429], statuses
    finally:
        stop(proc, output)


def test_the_documented_production_settings_pass_check_deploy(site):
    """docs/deployment.md, "In your own project": the settings module beside the README's,
    with the variables it reads, is clean under ``check --deploy`` (warnings included)."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    (site.project / "myproject" / "production.py").write_text(
        block_for(text, "myproject/production.py")
    )
    out = run(
        [site.python, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=site.project,
        DJANGO_SETTINGS_MODULE="myproject.production",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        REDIS_URL="redis://127.0.0.1:6379/0",
        STREAMPOD_REDIS_PREFIX="myproject_check",
    )
    assert "System check identified no issues" in out, out
