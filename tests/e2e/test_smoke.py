"""A first end-to-end check: a real daphne process spoken to with a plain websockets client."""

import json

import websockets


def frame(endpoint, class_name, **data):
    return json.dumps({"endpoint": endpoint, "object": {"className": class_name, "data": data}})


async def recv_until(ws, predicate, limit=20):
    seen = []
    for _ in range(limit):
        message = json.loads(await ws.recv())
        seen.append(message)
        if predicate(message):
            return message, seen
    raise AssertionError(f"not received; got {seen}")


async def test_ping_echo_and_token_identity(server, make_user):
    user, key = await make_user()
    async with websockets.connect(server.ws_url) as ws:
        await ws.send(json.dumps({"command": "ping", "args": {}}))
        await recv_until(ws, lambda m: m == {"command": "pong", "args": {}})
        await ws.send(frame("echo", "Echo", text="hello"))
        echoed, _ = await recv_until(ws, lambda m: m.get("endpoint") == "echo")
        assert echoed["object"] == {
            "className": "Echo",
            "data": {"text": "hello", "n": 0, "at": None},
        }
    async with websockets.connect(server.ws_url, additional_headers={"Authorization": key}) as ws:
        who, _ = await recv_until(ws, lambda m: m.get("endpoint") == "whoami")
        assert who["object"]["data"]["user_id"] == user.pk
