"""The Python client against real daphne processes (tests/e2e_app endpoints).

The message classes come from tests.e2e_app.protocol, which imports no Django:
exactly what a client program would import.
"""

import asyncio
import json
import os
import re
import subprocess
import sys

import pytest

from streaming.client import (
    Client,
    NotConnected,
    RawObject,
    ServerError,
    SignInFailed,
    StreamingConnectionHandler,
    StreamingConnectionStatus,
)
from tests.e2e_app.protocol import Echo, WhoAmI
from tests.support.client_status import StatusRecorder as _StatusRecorder
from tests.support.servers import ROOT, DaphneServer, free_port

S = StreamingConnectionStatus
WAIT = 30  # seconds: a safety net for awaits on real signals, never a measurement
PASSWORD = "secret-pass-1"


def StatusRecorder(client):
    return _StatusRecorder(client, wait=WAIT)


async def next_item(stream):
    return await asyncio.wait_for(anext(stream), WAIT)


async def test_sign_in_send_and_receive(server, make_user):
    user, _ = await make_user("alice", password=PASSWORD)
    async with Client(server.http_url) as client:
        await client.sign_in("alice", PASSWORD)
        assert client.auth_key.startswith("Token ")
        await client.open_streaming_connection()
        for n in range(3):
            await client.echo.send_stream_message(Echo(text="hello", n=n))
        assert [await next_item(client.echo.stream) for _ in range(3)] == [
            Echo(text="hello", n=n) for n in range(3)
        ]
        assert await next_item(client.whoami.stream) == WhoAmI(user_id=user.pk, endpoint="whoami")
        assert await next_item(client.endpoint("private").stream) == WhoAmI(
            user_id=user.pk, endpoint="private"
        )


async def test_sign_in_with_a_wrong_password_raises(server, make_user):
    await make_user("alice", password=PASSWORD)
    client = Client(server.http_url)
    with pytest.raises(SignInFailed) as failure:
        await client.sign_in("alice", "not the password")
    assert failure.value.status_code == 400
    assert "credentials" in str(failure.value)
    assert client.auth_key is None
    await client.close()


async def test_no_message_is_lost_between_open_and_the_first_iteration(server, make_user):
    """whoami and private send on open; nobody looks at them until much later."""
    user, key = await make_user("alice")
    async with Client(server.http_url, auth_key=key, raw=False) as client:
        await client.open_streaming_connection()
        # An error on `private` is answered after private's stream_opened (frames of an
        # endpoint wait for its hook), and whoami opens before private: once the error
        # is here, both WhoAmI frames have arrived, before any stream was touched.
        await client.private.send_stream_message(RawObject("NoSuchClass", {}), id="sync")
        error = await next_item(client.errors)
        assert (error.code, error.id) == ("unknown_class", "sync")
        assert await next_item(client.whoami.stream) == WhoAmI(user_id=user.pk, endpoint="whoami")
        assert await next_item(client.private.stream) == WhoAmI(user_id=user.pk, endpoint="private")


async def test_status_transitions_in_order(server):
    client = Client(server.http_url)
    statuses = StatusRecorder(client)
    assert client.streaming_connection_status is S.disconnected
    await client.open_streaming_connection()
    assert statuses.seen == [S.connecting, S.connected]
    await client.close_streaming_connection()
    assert statuses.seen == [S.connecting, S.connected, S.disconnected]
    assert client.disconnect_reason.by_client
    await client.close()


async def test_not_connected_before_open_and_after_close(server):
    client = Client(server.http_url)
    with pytest.raises(NotConnected):
        await client.echo.send_stream_message(Echo(text="too early"))
    await client.open_streaming_connection()
    await client.echo.send_stream_message(Echo(text="in time"))
    assert await next_item(client.echo.stream) == Echo(text="in time")
    await client.close_streaming_connection()
    with pytest.raises(NotConnected):
        await client.echo.send_stream_message(Echo(text="too late"))
    await client.close()


async def test_server_errors_surface_on_errors_and_to_the_callback(server):
    reported = []
    async with Client(server.http_url, on_error=reported.append) as client:
        await client.open_streaming_connection()
        await client.nope.send_stream_message(Echo(text="x"), id="e1")
        await client.echo.send_stream_message(RawObject("Echo", {"text": 5}), id="e2")
        await client.private.send_stream_message(Echo(text="anonymous"), id="e3")
        errors = [await next_item(client.errors) for _ in range(3)]
        assert all(isinstance(e, ServerError) for e in errors)
        by_id = {e.id: e for e in errors}
        assert (by_id["e1"].code, by_id["e1"].endpoint) == ("unknown_endpoint", "nope")
        assert (by_id["e2"].code, by_id["e2"].endpoint) == ("invalid_message", "echo")
        assert [item["path"] for item in by_id["e2"].errors] == ["text"]
        assert (by_id["e3"].code, by_id["e3"].endpoint) == ("not_authenticated", "private")
        assert reported == errors
        # The connection and the state are intact.
        await client.echo.send_stream_message(Echo(text="still here"))
        assert await next_item(client.echo.stream) == Echo(text="still here")


async def test_authenticate_an_open_socket(server, make_user):
    user, key = await make_user("alice")
    async with Client(server.http_url) as client:
        await client.open_streaming_connection()
        assert await next_item(client.whoami.stream) == WhoAmI(user_id=None, endpoint="whoami")
        assert await client.authenticate(key) == user.pk
        assert await next_item(client.whoami.stream) == WhoAmI(user_id=user.pk, endpoint="whoami")
        assert await client.authenticate("Token not-a-valid-key") is None
        assert await next_item(client.whoami.stream) == WhoAmI(user_id=None, endpoint="whoami")


async def test_an_invalid_token_stops_the_handler(server):
    client = Client(server.http_url, auth_key="Token 0000000000000000000000000000000000000000")
    statuses = StatusRecorder(client)
    handler = StreamingConnectionHandler(client, min_delay=0.01)
    handler.start()
    await asyncio.wait_for(handler.wait_closed(), WAIT)
    assert not handler.running
    assert statuses.seen == [S.connecting, S.disconnected]
    reason = client.disconnect_reason
    assert reason.code == 4401
    assert reason.is_auth_failure
    assert "credentials" in reason.message
    await client.close()


async def test_reconnect_after_the_server_restarts_on_the_same_port(django_db_setup, make_user):
    user, key = await make_user("alice")
    port = free_port()
    first = await asyncio.to_thread(DaphneServer(port=port).start)
    second = None
    client = Client(first.http_url, auth_key=key)
    statuses = StatusRecorder(client)
    handler = StreamingConnectionHandler(client, min_delay=0.05, max_delay=0.5)
    try:
        handler.start()
        await statuses.wait_for(S.connected)
        echoes = client.echo.stream  # one iterator, kept across the restart
        await client.echo.send_stream_message(Echo(text="before"))
        assert await next_item(echoes) == Echo(text="before")

        await asyncio.to_thread(first.stop)
        await statuses.wait_for(S.waiting_to_retry)
        with pytest.raises(NotConnected):
            await client.echo.send_stream_message(Echo(text="while down"))
        second = await asyncio.to_thread(DaphneServer(port=port).start)
        await statuses.wait_for(S.connected, count=2)

        await client.echo.send_stream_message(Echo(text="after"))
        assert await next_item(echoes) == Echo(text="after")
        # Endpoints re-opened for the same user on the new connection.
        whoami = [await next_item(client.whoami.stream) for _ in range(2)]
        assert whoami == [WhoAmI(user_id=user.pk, endpoint="whoami")] * 2
    finally:
        await handler.close()
        await client.close()
        await asyncio.to_thread(first.stop)
        if second is not None:
            await asyncio.to_thread(second.stop)
    seen = statuses.seen
    assert seen[:3] == [S.connecting, S.connected, S.waiting_to_retry]
    assert seen[-3:] == [S.connecting, S.connected, S.disconnected]
    retries = seen[3:-3]  # failed attempts while the server was down
    assert retries == [S.connecting, S.waiting_to_retry] * (len(retries) // 2)


# -- the command-line tool ------------------------------------------------------------------


def run_cli(*args, stdin="", **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "streaming.client", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        **kwargs,
    )


async def test_cli_sends_stdin_lines_and_prints_the_endpoint_frames(server, make_user):
    _, key = await make_user("alice")
    token = key.removeprefix("Token ")
    lines = "\n".join(
        [
            json.dumps({"className": "Echo", "data": {"text": "one", "n": 1}}),
            "this is not JSON",
            json.dumps({"className": "Echo", "data": {"text": 2}, "id": "bad"}),
            json.dumps({"className": "Echo", "data": {"text": "two", "n": 2}}),
        ]
    )
    result = await asyncio.to_thread(
        run_cli, "--url", server.http_url, "--token", token, "--endpoint", "echo",
        "--count", "2", stdin=lines + "\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert printed == [
        {"className": "Echo", "data": {"text": "one", "n": 1, "at": None}},
        {"className": "Echo", "data": {"text": "two", "n": 2, "at": None}},
    ]
    assert "# status: connected" in result.stderr
    assert "not sent:" in result.stderr  # the line that is not JSON
    assert re.search(r"# error: invalid_message: .*\(endpoint echo\) \(id bad\)", result.stderr)


async def test_cli_signs_in_with_the_password_it_asks_for(server, make_user):
    user, _ = await make_user("alice", password=PASSWORD)
    # No controlling terminal (new session): getpass reads the password from stdin.
    result = await asyncio.to_thread(
        run_cli, "--url", server.http_url, "--user", "alice", "--endpoint", "whoami",
        "--count", "1", stdin=PASSWORD + "\n", start_new_session=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "className": "WhoAmI",
        "data": {"user_id": user.pk, "endpoint": "whoami"},
    }


async def test_cli_exits_1_on_refused_credentials(server, make_user):
    await make_user("alice", password=PASSWORD)
    bad_token = await asyncio.to_thread(
        run_cli, "--url", server.http_url, "--token", "f" * 40, "--endpoint", "echo",
    )  # fmt: skip
    assert bad_token.returncode == 1
    assert "close code 4401" in bad_token.stderr
    bad_password = await asyncio.to_thread(
        run_cli, "--url", server.http_url, "--user", "alice", "--endpoint", "echo",
        stdin="wrong\n", start_new_session=True,
    )  # fmt: skip
    assert bad_password.returncode == 1
    assert "sign-in failed" in bad_password.stderr


# -- docs/clients.md ---------------------------------------------------------------------------


def python_examples():
    text = (ROOT / "docs" / "clients.md").read_text()
    section = text.split("## Python client", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_docs_have_python_examples():
    examples = python_examples()
    assert len(examples) >= 3
    assert all("asyncio.run(main())" in code for code in examples)


@pytest.mark.parametrize("index", range(len(python_examples())))
async def test_docs_python_examples_run(index, server, make_user):
    """Each Python example of docs/clients.md, as written, against a real server."""
    from chat.demo import DEMO_PASSWORD

    await make_user("alice", password=DEMO_PASSWORD)
    bob, _ = await make_user("bob", password=DEMO_PASSWORD)
    code = python_examples()[index]
    env = {**os.environ, "STREAMPOD_URL": server.http_url, "STREAMPOD_BOB_ID": str(bob.pk)}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
