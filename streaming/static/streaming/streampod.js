/**
 * streampod.js: the browser client of Streampod. An ES module with no build step and
 * no dependencies.
 *
 *     import {Client} from "/static/streaming/streampod.js";
 *
 *     const client = new Client();                 // this page's origin, /websocket/
 *     client.addStreamingConnectionStatusListener((status) => console.log(status.state));
 *     await client.openStreamingConnection();      // resolves once connected (first pong)
 *     client.endpoint("echo").sendStreamMessage({className: "Echo", data: {text: "hi"}});
 *     for await (const message of client.endpoint("echo").stream) {
 *       console.log(message.className, message.data);
 *     }
 *
 * Contracts (see docs/clients.md, "Browser client"):
 *
 * - One WebSocket carries every endpoint. The wire format is docs/protocol.md's: text
 *   frames, one JSON object each; data is `{endpoint, object: {className, data}, id?}`.
 * - Authentication is the page's Django session cookie: a same-origin WebSocket sends
 *   it with the handshake. Nothing else is sent.
 * - Status: "connecting" -> "connected" (only after the first pong: the client pings as
 *   soon as the socket opens) -> "waitingToRetry" (with `retryInSeconds`) -> ... or
 *   "disconnected" (with `code` and `reason`). Listeners fire only on a change.
 * - Heartbeat: a ping every `pingInterval` seconds; `silenceTimeout` seconds without any
 *   frame means the connection is dead: it is dropped and retried.
 * - Reconnects: exponential backoff with jitter (`retry: {min, max, factor, jitter}`),
 *   reset after a successful connection. Close codes 4401 and 4403 (credentials
 *   refused, forbidden) stop retrying: status "disconnected", reason "unauthorized" or
 *   "forbidden".
 * - Every data frame is buffered from the moment the socket opens, per endpoint, so
 *   nothing is lost between opening and iterating. Each buffer holds `bufferSize`
 *   messages; when full, the OLDEST message is dropped and the gap is reported where it
 *   is: the next read of that stream rejects with `StreamOverflow` (`dropped`: how
 *   many), once, then reading goes on with the messages kept (as the Python client
 *   does). `ref.dropped` counts every drop. Streams survive reconnects.
 * - `sendStreamMessage` throws `NotConnected` unless the status is "connected"; nothing
 *   is queued or dropped silently. Server `error` frames become `ServerError`s.
 */

/** The connection states, as `status.state` carries them. */
export const StreamingConnectionStatus = Object.freeze({
  connecting: "connecting",
  connected: "connected",
  waitingToRetry: "waitingToRetry",
  disconnected: "disconnected",
});

/** Close codes the server uses (docs/protocol.md). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  POLICY: 4008,
  TOO_BIG: 4009,
  OVERLOADED: 4013,
  UNAUTHORIZED: 4401,
  FORBIDDEN: 4403,
});

/** Close codes after which retrying with the same credentials is pointless. */
const FINAL_CLOSE_CODES = new Map([
  [CloseCode.UNAUTHORIZED, "unauthorized"],
  [CloseCode.FORBIDDEN, "forbidden"],
]);

/** Longest frame `id` the server accepts (streaming/protocol.py MAX_ID_LENGTH). */
const MAX_ID_LENGTH = 128;

const PING = JSON.stringify({command: "ping", args: {}});

const DEFAULT_RETRY = Object.freeze({min: 0.5, max: 30, factor: 2, jitter: 0.5});

/** Every option of `new Client(baseUrl, options)` with its default. Times in seconds. */
export const DEFAULTS = Object.freeze({
  pingInterval: 20,
  silenceTimeout: 40,
  connectTimeout: 10,
  retry: DEFAULT_RETRY,
  bufferSize: 1000,
  onError: null,
});

// -- errors -----------------------------------------------------------------------------

/** Base class of every error this module raises or reports. */
export class StreampodError extends Error {
  constructor(message) {
    super(message);
    this.name = new.target.name;
  }
}

/** `sendStreamMessage` while the status is not "connected". */
export class NotConnected extends StreampodError {
  constructor(message = "The streaming connection is not connected.") {
    super(message);
    this.code = "not_connected";
  }
}

/**
 * An `error` frame from the server: `code` (docs/protocol.md), `message`, and when the
 * server knows them `endpoint`, `id` (of the frame it is about) and `errors` (for
 * `invalid_message`: a list of `{path, reason}`).
 */
export class ServerError extends StreampodError {
  constructor({code, message, endpoint = null, id = null, errors = null} = {}) {
    super(typeof message === "string" ? message : String(code));
    this.code = typeof code === "string" ? code : "unknown";
    this.endpoint = typeof endpoint === "string" ? endpoint : null;
    this.id = typeof id === "string" ? id : null;
    this.errors = Array.isArray(errors) ? errors : null;
  }
}

/** A frame the server sent that is not a Streampod frame (reported, then ignored). */
export class MalformedFrame extends StreampodError {
  constructor(message) {
    super(message);
    this.code = "malformed_frame";
    this.endpoint = null;
  }
}

/**
 * Thrown by a stream's next read after its buffer was full: `dropped` messages (the
 * oldest) are missing just before the next one. Catch it, re-sync if the application
 * needs to, and iterate again: the messages kept are still there.
 */
export class StreamOverflow extends StreampodError {
  constructor(endpoint, dropped) {
    const what = endpoint === null ? "client.errors" : `endpoint ${JSON.stringify(endpoint)}`;
    super(`${dropped} message(s) of ${what} dropped: the buffer was full ` +
      "(iterate faster or raise bufferSize).");
    this.code = "stream_overflow";
    this.endpoint = endpoint;
    this.dropped = dropped;
  }
}

/** Why `openStreamingConnection()` gave up: `code` (close code or null), `reason`. */
export class ConnectionClosed extends StreampodError {
  constructor(reason, code = null) {
    super(`Streaming connection ${reason}` + (code === null ? "." : ` (close code ${code}).`));
    this.reason = reason;
    this.closeCode = code;
  }
}

// -- helpers ----------------------------------------------------------------------------

function isPlainObject(value) {
  if (value === null || typeof value !== "object") return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function report(error) {
  // A listener or callback that throws must not break the client or other listeners.
  if (typeof globalThis.reportError === "function") globalThis.reportError(error);
  else console.error(error);
}

function positive(name, value) {
  if (typeof value !== "number" || !(value > 0) || !Number.isFinite(value)) {
    throw new TypeError(`${name} must be a positive number of seconds, not ${value}`);
  }
  return value;
}

/**
 * The delay (seconds) before retry number `attempt` (0 for the first retry):
 * `min * factor ** attempt`, capped at `max`, minus up to `jitter` of itself, at random,
 * so that clients cut off together do not all come back together.
 */
export function backoffDelay(attempt, {min, max, factor, jitter}, random = Math.random) {
  const base = Math.min(max, min * factor ** attempt);
  return base * (1 - jitter * random());
}

function checkRetry(retry) {
  if (retry === false || retry === null) return null;
  if (retry === true || retry === undefined) return DEFAULT_RETRY;
  if (!isPlainObject(retry)) {
    throw new TypeError("retry must be false or {min, max, factor, jitter}");
  }
  for (const key of Object.keys(retry)) {
    if (!(key in DEFAULT_RETRY)) throw new TypeError(`Unknown retry option ${JSON.stringify(key)}`);
  }
  const merged = {...DEFAULT_RETRY, ...retry};
  positive("retry.min", merged.min);
  positive("retry.max", merged.max);
  if (merged.max < merged.min) throw new TypeError("retry.max must be >= retry.min");
  if (typeof merged.factor !== "number" || !(merged.factor >= 1)) {
    throw new TypeError("retry.factor must be a number >= 1");
  }
  if (typeof merged.jitter !== "number" || !(merged.jitter >= 0 && merged.jitter <= 1)) {
    throw new TypeError("retry.jitter must be a number from 0 to 1");
  }
  return Object.freeze(merged);
}

function checkOptions(options) {
  if (!isPlainObject(options)) throw new TypeError("options must be a plain object");
  for (const key of Object.keys(options)) {
    if (!(key in DEFAULTS)) throw new TypeError(`Unknown option ${JSON.stringify(key)}`);
  }
  const merged = {...DEFAULTS, ...options};
  positive("pingInterval", merged.pingInterval);
  positive("silenceTimeout", merged.silenceTimeout);
  positive("connectTimeout", merged.connectTimeout);
  if (merged.silenceTimeout <= merged.pingInterval) {
    // Otherwise a healthy but idle connection would be declared dead between pings.
    throw new TypeError("silenceTimeout must be longer than pingInterval");
  }
  if (!Number.isInteger(merged.bufferSize) || merged.bufferSize < 1) {
    throw new TypeError("bufferSize must be a positive integer");
  }
  if (merged.onError !== null && typeof merged.onError !== "function") {
    throw new TypeError("onError must be a function or null");
  }
  merged.retry = checkRetry(options.retry);
  return merged;
}

/** `ws(s)://<host>/<path>/websocket/` for an http(s) or ws(s) base URL, relative to the page. */
export function socketUrl(baseUrl) {
  const page = globalThis.location ? globalThis.location.href : undefined;
  const url = new URL(baseUrl ?? "/", page);
  const schemes = {"http:": "ws:", "https:": "wss:", "ws:": "ws:", "wss:": "wss:"};
  if (!(url.protocol in schemes)) throw new TypeError(`Not an http(s) or ws(s) URL: ${url}`);
  url.protocol = schemes[url.protocol];
  if (!url.pathname.endsWith("/websocket/")) {
    url.pathname = url.pathname.replace(/\/?$/, "/") + "websocket/";
  }
  url.search = "";
  url.hash = "";
  return url.href;
}

/**
 * A bounded FIFO that async iterators read. `push` never blocks: when full it drops
 * the oldest item and counts it; the next `next()` then rejects with `gapError(count)`.
 * Items go to waiting readers first, in order.
 */
class BoundedQueue {
  constructor(limit, gapError) {
    this.limit = limit;
    this.gapError = gapError;
    this.items = [];
    this.readers = []; // resolve functions of pending next() calls, oldest first
    this.gap = 0; // items dropped since the last read
    this.dropped = 0; // items dropped, ever
  }

  get length() {
    return this.items.length;
  }

  push(item) {
    const reader = this.readers.shift();
    if (reader) {
      reader({value: item, done: false});
      return;
    }
    if (this.items.length >= this.limit) {
      this.items.shift();
      this.gap += 1;
      this.dropped += 1;
    }
    this.items.push(item);
  }

  /** A new async iterator; several iterators share (split) the items. */
  iterator() {
    const queue = this;
    let finished = false;
    const mine = new Set();
    return {
      next() {
        if (finished) return Promise.resolve({value: undefined, done: true});
        if (queue.gap) {
          const error = queue.gapError(queue.gap);
          queue.gap = 0;
          return Promise.reject(error);
        }
        if (queue.items.length) return Promise.resolve({value: queue.items.shift(), done: false});
        return new Promise((resolve) => {
          const reader = (result) => {
            mine.delete(reader);
            resolve(result);
          };
          mine.add(reader);
          queue.readers.push(reader);
        });
      },
      return(value) {
        // `break` in a for-await loop: stop this iterator; the queue keeps buffering.
        finished = true;
        for (const reader of mine) {
          queue.readers.splice(queue.readers.indexOf(reader), 1);
          reader({value: undefined, done: true});
        }
        return Promise.resolve({value, done: true});
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }
}

// -- endpoints --------------------------------------------------------------------------

/** What `client.endpoint(name)` returns: that endpoint's stream and sender. */
export class EndpointRef {
  constructor(client, name) {
    this.client = client;
    this.name = name;
    this._queue = new BoundedQueue(
      client.options.bufferSize, (dropped) => new StreamOverflow(name, dropped));
  }

  /**
   * An async iterator of `{className, data}` objects (plus `id` when the server set
   * one), in arrival order, buffered since the connection opened. It never ends by
   * itself (it survives reconnects and closes); `break` stops it. After the buffer
   * overflowed, the next read rejects with `StreamOverflow`, once. Each access returns
   * a new iterator over the same buffer: concurrent iterators split the messages.
   */
  get stream() {
    return this._queue.iterator();
  }

  /** Messages dropped because the buffer was full, since the client was created. */
  get dropped() {
    return this._queue.dropped;
  }

  /** Messages waiting in the buffer. */
  get buffered() {
    return this._queue.length;
  }

  /**
   * Send `{className, data}` to this endpoint; `options.id` (a string of at most 128
   * characters) is echoed by any error about this frame. Throws `NotConnected` unless
   * the status is "connected", `TypeError` for anything that is not a message.
   * `Date` values in `data` are sent as UTC ISO 8601 (what the server expects).
   */
  sendStreamMessage(message, {id} = {}) {
    if (!isPlainObject(message) || typeof message.className !== "string" || !message.className) {
      throw new TypeError("A message is {className: <non-empty string>, data: <object>}");
    }
    if (!isPlainObject(message.data)) throw new TypeError("message.data must be a plain object");
    const frame = {endpoint: this.name, object: {className: message.className, data: message.data}};
    if (id !== undefined) {
      if (typeof id !== "string" || id.length > MAX_ID_LENGTH) {
        throw new TypeError(`id must be a string of at most ${MAX_ID_LENGTH} characters`);
      }
      frame.id = id;
    }
    this.client._sendText(JSON.stringify(frame));
  }

  _push(message) {
    this._queue.push(message);
  }
}

// -- the client -------------------------------------------------------------------------

/** One live socket and its timers. */
class Connection {
  constructor(ws) {
    this.ws = ws;
    this.ponged = false;
    this.pingedAt = -Infinity; // performance.now() of the last ping
    this.heardAt = -Infinity; // ... and of the last frame received
    this.pingTimer = null;
    this.silenceTimer = null;
    this.connectTimer = null;
  }

  stopTimers() {
    clearInterval(this.pingTimer);
    clearTimeout(this.silenceTimer);
    clearTimeout(this.connectTimer);
  }
}

const INITIAL_STATUS = Object.freeze(
  {state: StreamingConnectionStatus.disconnected, code: null, reason: "not opened"});

export class Client {
  /**
   * `baseUrl`: the server (http(s) or ws(s)); default: this page's origin. The socket
   * is `<baseUrl>/websocket/`. `options`: see `DEFAULTS` (unknown keys are refused).
   */
  constructor(baseUrl = undefined, options = {}) {
    this.url = socketUrl(baseUrl);
    this.options = Object.freeze(checkOptions(options));
    /** Called with each error (`ServerError`, `MalformedFrame`). */
    this.onError = this.options.onError;
    this._endpoints = new Map();
    this._errors = new BoundedQueue(
      this.options.bufferSize, (dropped) => new StreamOverflow(null, dropped));
    this._listeners = [];
    this._status = INITIAL_STATUS;
    this._conn = null;
    this._wanted = false; // true between openStreamingConnection() and the end
    this._attempt = 0; // failed attempts since the last successful connection
    this._retryTimer = null;
    this._retryAt = 0; // performance.now() when the pending retry fires
    this._openers = []; // {resolve, reject} of pending openStreamingConnection() calls
  }

  /** The current status: `{state, ...}` (frozen). */
  get status() {
    return this._status;
  }

  /** Seconds left before the next attempt while "waitingToRetry" (counts down), else null. */
  get retryInSeconds() {
    if (this._retryTimer === null) return null;
    return Math.max(0, (this._retryAt - performance.now()) / 1000);
  }

  /** The endpoint ref for `name` (one per name). */
  endpoint(name) {
    if (typeof name !== "string" || !name) {
      throw new TypeError("An endpoint name is a non-empty string");
    }
    let ref = this._endpoints.get(name);
    if (!ref) {
      ref = new EndpointRef(this, name);
      this._endpoints.set(name, ref);
    }
    return ref;
  }

  /**
   * Errors reported by the server (`ServerError`) or about what it sent
   * (`MalformedFrame`), as an async iterator: bounded like the endpoint streams (the
   * latest `bufferSize` are kept; a read after a gap rejects with `StreamOverflow`).
   */
  get errors() {
    return this._errors.iterator();
  }

  addStreamingConnectionStatusListener(listener) {
    if (typeof listener !== "function") throw new TypeError("A listener is a function");
    this._listeners.push(listener);
  }

  removeStreamingConnectionStatusListener(listener) {
    const index = this._listeners.indexOf(listener);
    if (index >= 0) this._listeners.splice(index, 1);
  }

  /**
   * Connect, and keep reconnecting (unless `retry: false`) until
   * `closeStreamingConnection()` or a 4401/4403 close. Resolves when connected (now,
   * if already). Rejects with `ConnectionClosed` when the client gives up first:
   * closed by the page, refused credentials, or (with `retry: false`) a failure.
   * Calling it while waiting to retry retries at once.
   */
  openStreamingConnection() {
    this._wanted = true;
    if (this._status.state === StreamingConnectionStatus.connected) return Promise.resolve();
    const opened = new Promise((resolve, reject) => this._openers.push({resolve, reject}));
    if (this._conn === null) {
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
      this._connect();
    }
    return opened;
  }

  /** Close the socket and stop reconnecting. Status: "disconnected", reason "closed". */
  closeStreamingConnection() {
    this._wanted = false;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const conn = this._conn;
    if (conn !== null) this._forget(conn, CloseCode.NORMAL);
    this._giveUp("closed", CloseCode.NORMAL);
  }

  // -- connection lifecycle --------------------------------------------------------------

  _connect() {
    this._setStatus({state: StreamingConnectionStatus.connecting});
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (error) {
      // E.g. a ws: URL from an https: page: the browser will refuse every retry too.
      report(error);
      this._wanted = false;
      this._giveUp("refused by the browser", null);
      return;
    }
    const conn = new Connection(ws);
    this._conn = conn;
    const {pingInterval, connectTimeout} = this.options;
    conn.connectTimer = setTimeout(() => this._drop(conn, "no answer"), connectTimeout * 1000);
    ws.onopen = () => {
      if (this._conn !== conn) return;
      this._ping(conn); // the first pong marks the connection usable
      conn.pingTimer = setInterval(() => this._ping(conn), pingInterval * 1000);
      this._heardFrom(conn);
    };
    ws.onmessage = (event) => {
      if (this._conn !== conn) return;
      this._heardFrom(conn);
      this._receive(conn, event.data);
    };
    ws.onclose = (event) => {
      if (this._conn !== conn) return;
      // daphne sends no close reasons: the code says what happened.
      this._lost(conn, event.code, "lost");
    };
    // An error event is always followed by a close event, which decides what happens.
    ws.onerror = () => {};
  }

  _ping(conn) {
    if (conn.ws.readyState !== WebSocket.OPEN) return;
    conn.ws.send(PING);
    conn.pingedAt = performance.now();
  }

  _heardFrom(conn) {
    conn.heardAt = performance.now();
    this._armSilence(conn, this.options.silenceTimeout);
  }

  _armSilence(conn, seconds) {
    clearTimeout(conn.silenceTimer);
    conn.silenceTimer = setTimeout(() => this._silent(conn), seconds * 1000);
  }

  _silent(conn) {
    if (conn.pingedAt <= conn.heardAt) {
      // No ping went out since the last frame: the page's timers were throttled (a
      // background tab), so the silence proves nothing yet. Ask now, then judge.
      this._ping(conn);
      this._armSilence(conn, this.options.silenceTimeout - this.options.pingInterval);
      return;
    }
    this._drop(conn, "silent");
  }

  /** Give up on a socket that went quiet: don't wait for a close handshake it can't do. */
  _drop(conn, why) {
    if (this._conn !== conn) return;
    this._forget(conn);
    this._lost(conn, null, why);
  }

  _forget(conn, code = undefined) {
    conn.stopTimers();
    const ws = conn.ws;
    ws.onopen = ws.onmessage = ws.onclose = null;
    if (this._conn === conn) this._conn = null;
    try {
      ws.close(code);
    } catch (error) {
      report(error);
    }
  }

  _lost(conn, code, why) {
    conn.stopTimers();
    if (this._conn === conn) this._conn = null;
    if (!this._wanted) return;
    const final = FINAL_CLOSE_CODES.get(code);
    if (final !== undefined) {
      this._wanted = false;
      this._giveUp(final, code);
      return;
    }
    const retry = this.options.retry;
    if (retry === null) {
      this._wanted = false;
      this._giveUp(why, code);
      return;
    }
    const delay = backoffDelay(this._attempt, retry);
    this._attempt += 1;
    this._setStatus({
      state: StreamingConnectionStatus.waitingToRetry,
      retryInSeconds: delay,
      attempt: this._attempt,
      code,
    });
    this._retryAt = performance.now() + delay * 1000;
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      if (this._wanted && this._conn === null) this._connect();
    }, delay * 1000);
  }

  _giveUp(reason, code) {
    this._setStatus({state: StreamingConnectionStatus.disconnected, code: code ?? null, reason});
    const openers = this._openers.splice(0);
    for (const {reject} of openers) reject(new ConnectionClosed(reason, code ?? null));
  }

  _connected(conn) {
    conn.ponged = true;
    clearTimeout(conn.connectTimer);
    this._attempt = 0; // the backoff starts over after a success
    this._setStatus({state: StreamingConnectionStatus.connected});
    const openers = this._openers.splice(0);
    for (const {resolve} of openers) resolve();
  }

  _setStatus(status) {
    const previous = this._status;
    const keys = new Set([...Object.keys(previous), ...Object.keys(status)]);
    if ([...keys].every((key) => previous[key] === status[key])) return;
    this._status = Object.freeze(status);
    for (const listener of [...this._listeners]) {
      try {
        listener(this._status);
      } catch (error) {
        report(error);
      }
    }
  }

  // -- frames ------------------------------------------------------------------------------

  _sendText(text) {
    const conn = this._conn;
    if (this._status.state !== StreamingConnectionStatus.connected || conn === null ||
        conn.ws.readyState !== WebSocket.OPEN) {
      throw new NotConnected();
    }
    conn.ws.send(text);
  }

  _receive(conn, raw) {
    let frame;
    try {
      if (typeof raw !== "string") throw new SyntaxError("binary frame");
      frame = JSON.parse(raw);
    } catch {
      this._reportError(new MalformedFrame("The server sent a frame that is not JSON text."));
      return;
    }
    if (!isPlainObject(frame)) {
      this._reportError(new MalformedFrame("The server sent a frame that is not a JSON object."));
      return;
    }
    if ("command" in frame) {
      const args = isPlainObject(frame.args) ? frame.args : {};
      if (frame.command === "pong") {
        if (!conn.ponged) this._connected(conn);
      } else if (frame.command === "error") {
        this._reportError(new ServerError(args));
      }
      // Other commands (e.g. "auth" replies) need nothing here; later versions may add some.
      return;
    }
    const {endpoint, object} = frame;
    if (typeof endpoint !== "string" || !endpoint || !isPlainObject(object) ||
        typeof object.className !== "string" || !isPlainObject(object.data)) {
      this._reportError(new MalformedFrame("The server sent a data frame without " +
        "endpoint, object.className and object.data."));
      return;
    }
    const message = {className: object.className, data: object.data};
    if (typeof frame.id === "string") message.id = frame.id;
    this.endpoint(endpoint)._push(message);
  }

  _reportError(error) {
    this._errors.push(error);
    if (typeof this.onError === "function") {
      try {
        this.onError(error);
      } catch (callbackError) {
        report(callbackError);
      }
    }
  }
}
