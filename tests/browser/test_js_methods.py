"""streampod.js streaming methods in headless Chromium against real daphne: a value, a
stream (and cancelling it by leaving the loop), an input stream, 50 concurrent calls,
and failures (tests/e2e_app/methods_endpoints.py)."""

from __future__ import annotations

import pytest

from tests.support.servers import DaphneServer

WAIT = 30  # seconds: a safety net for awaits on real signals, never a measurement


@pytest.fixture(scope="module")
def methods_server(django_db_setup, django_db_blocker):
    with DaphneServer(env={"DJANGO_SETTINGS_MODULE": "tests.e2e_methods_settings"}) as srv:
        yield srv


CONNECT = """async () => {
    const {Client} = window.streampod;
    window.client = new Client();
    await window.client.openStreamingConnection();
}"""


async def page_for(open_page, server):
    page = await open_page(server.http_url)
    await page.evaluate(CONNECT)
    return page


async def test_a_call_returns_its_value(methods_server, open_page):
    page = await page_for(open_page, methods_server)
    result = await page.evaluate(
        """async () => {
            const ref = window.client.endpoint('methods');
            return [await ref.call('history', {with_user: 2, limit: 2}),
                    await ref.call('count', {upto: 3})];
        }"""
    )
    assert result == [
        [
            {"className": "e2e.methods.Line", "data": {"text": "to 2", "n": 0}},
            {"className": "e2e.methods.Line", "data": {"text": "to 2", "n": 1}},
        ],
        [0, 1, 2],
    ]


async def test_dates_maps_and_dicts_travel_as_the_methods_hints_say(methods_server, open_page):
    """A Date goes as its ISO string, a Map as an object (helper "reviewer10": a Map or a
    Set went as ``{}``); a dict result comes back as an object, a message in it as one."""
    page = await page_for(open_page, methods_server)
    result = await page.evaluate(
        """async () => window.client.endpoint('methods').call('stamp', {
            at: new Date(Date.UTC(2026, 11, 1, 12, 30)), counts: new Map([['a', 1]])})"""
    )
    assert result == {
        "at": "2026-12-01T12:30:00Z",
        "counts": {"a": 1},
        "line": {"className": "e2e.methods.Line", "data": {"text": "stamped", "n": 1}},
    }


async def test_a_stream_in_order_and_leaving_the_loop_cancels_it(methods_server, open_page):
    page = await page_for(open_page, methods_server)
    result = await page.evaluate(
        """async () => {
            const ref = window.client.endpoint('methods');
            const counted = [];
            for await (const value of ref.call('count', {upto: 40})) counted.push(value);
            const ticks = [];
            for await (const line of ref.call('endless', {name: 'js-cancel'})) {
                ticks.push(line.data.n);
                if (ticks.length === 20) break;
            }
            let stats;
            do {
                stats = await ref.call('stats', {name: 'js-cancel'});
            } while (!stats[1]);
            return {counted, ticks, produced: stats[0], connected: window.client.isConnected};
        }"""
    )
    assert result["counted"] == list(range(40))
    assert result["ticks"] == list(range(1, 21))
    assert result["produced"] <= 20 + 64  # paused on the credit, then closed
    assert result["connected"] is True


async def test_an_input_stream_and_fifty_concurrent_calls(methods_server, open_page):
    page = await page_for(open_page, methods_server)
    result = await page.evaluate(
        """async () => {
            const ref = window.client.endpoint('methods');
            async function* strokes() {
                for (let i = 0; i < 50; i++) yield {x: i, y: 1};
            }
            async function* broken() {
                yield {x: 1, y: 1};
                throw new Error('pen broke');
            }
            const uploaded = [await ref.call('upload', {strokes: strokes()}),
                              await ref.call('upload', {strokes: broken()})];
            const calls = [];
            for (let i = 0; i < 50; i++) calls.push(ref.call('history', {with_user: i, limit: 1}));
            const many = (await Promise.all(calls)).map((lines) => lines[0].data.text);
            return {uploaded, many};
        }"""
    )
    assert result["uploaded"] == [sum(range(50)) + 50, -1]
    assert result["many"] == [f"to {i}" for i in range(50)]


async def test_failures_reject_with_call_failed(methods_server, open_page):
    page = await page_for(open_page, methods_server)
    result = await page.evaluate(
        """async () => {
            const {CallFailed} = window.streampod;
            const ref = window.client.endpoint('methods');
            const outcome = async (promise) => {
                try {
                    await promise;
                    return 'resolved';
                } catch (error) {
                    return [error instanceof CallFailed, error.code, error.errors,
                            error.exception];
                }
            };
            return [
                await outcome(window.client.endpoint('nope').call('history', {})),
                await outcome(ref.call('nope')),
                await outcome(ref.call('history', {with_user: '2'})),
                await outcome(ref.call('out_of_ink', {color: 'red'})),
                await outcome(ref.call('whoami')),
                window.client.isConnected,
                await outcome(ref.call('upload', {})),
                await outcome(ref.call('upload', {strokes: [{x: 1, y: 1}]})),
            ];
        }"""
    )
    assert result[0][:2] == [True, "unknown_endpoint"]
    assert result[1][:2] == [True, "unknown_method"]
    assert result[2][:2] == [True, "invalid_message"]
    assert result[2][2][0]["path"] == "with_user"
    assert result[3][1] == "exception"
    assert result[3][3] == {"className": "e2e.methods.OutOfInk", "data": {"color": "red"}}
    assert result[4][1] == "not_authenticated"
    assert result[5] is True
    # An input stream left out, or given as an array (not an async iterable): refused,
    # not waited for (helper "serverpod10").
    for refused in result[6:8]:
        assert refused[:2] == [True, "invalid_message"]
        assert refused[2][0]["path"] == "strokes"
