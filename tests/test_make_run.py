"""`make run PORT=...` (issue 13): the demo is served on that port, and says so.

`seed_demo --port` prints the URL; the Makefile passes `PORT` to it and to `runserver`
(`make -n` prints the commands without running them: nothing is served here).
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess

import pytest
from django.core.management import call_command

from tests.support.servers import ROOT

pytestmark = pytest.mark.django_db


def seed(settings, *args: str) -> str:
    settings.DEBUG = True  # the URL and the demo passwords are printed only with debug on
    out = io.StringIO()
    call_command("seed_demo", *args, stdout=out)
    return out.getvalue()


def test_seed_demo_prints_the_port_it_is_given(settings):
    out = seed(settings, "--port", "8100")
    assert "Open http://127.0.0.1:8100/" in out
    assert ":8000" not in out


def test_seed_demo_prints_port_8000_by_default(settings):
    assert "Open http://127.0.0.1:8000/" in seed(settings)


def make_dry_run(*args: str) -> str:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    done = subprocess.run(
        [make, "-n", "--no-print-directory", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(("args", "port"), [(("run", "PORT=8100"), 8100), (("run",), 8000)])
def test_make_run_passes_the_port_to_seed_demo_and_runserver(args, port):
    commands = make_dry_run(*args)
    assert re.search(rf"manage\.py seed_demo --port {port}$", commands, re.M), commands
    assert re.search(rf"manage\.py runserver 127\.0\.0\.1:{port}$", commands, re.M), commands


def test_the_readme_mentions_port():
    readme = (ROOT / "README.md").read_text()
    assert "make run PORT=8100" in readme
