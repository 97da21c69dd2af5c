"""A bare ASGI app for tests/e2e/test_graceful.py: accepts, sends 3 MB (48 binary frames
of 64 KB), then waits for the disconnect. Run by uvicorn with Streampod's protocol."""


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    chunk = b"x" * 65536
    for _ in range(48):
        await send({"type": "websocket.send", "bytes": chunk})
    while (await receive())["type"] != "websocket.disconnect":
        pass
