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
 * Contracts (see docs/clients.md, "Browser client"; docs/clients.md, "The same names in
 * both clients", maps every name to the Python client's):
 *
 * - One WebSocket carries every endpoint. The wire format is docs/protocol.md's: text
 *   frames, one JSON object each; data is `{endpoint, object: {className, data}, id?}`.
 * - Authentication: the page's Django session cookie, which a same-origin WebSocket
 *   sends with the handshake; and/or a DRF token (`authKey`, `authenticate()`,
 *   `signIn()`), which a browser cannot put in a WebSocket header, so it goes in the
 *   `auth` command, sent right after the first ping on every socket. While such an
 *   `auth` is unanswered the status stays "connecting": no frame of the page is sent
 *   under the wrong identity. A refused key leaves the socket anonymous (not closed):
 *   `authenticate()` resolves null, and a refused `authKey` at a (re)connection is
 *   reported as `AuthenticationFailed`.
 * - Status: "connecting" -> "connected" (only after the first pong, and the answer to
 *   the `auth` command when one was sent) -> "waitingToRetry" (with `retryInSeconds`)
 *   -> ... or "disconnected" (with `code` and `reason`). Listeners fire only on a change.
 * - Heartbeat: a ping every `pingInterval` seconds; `silenceTimeout` seconds without any
 *   frame, or with frames sent and none of them leaving the browser (a server that no
 *   longer reads), means the connection is dead: it is dropped and retried.
 * - Reconnects: exponential backoff with jitter (`retry: {min, max, factor, jitter,
 *   restartSpread, stableAfter}`), reset after a connection that held for `stableAfter`
 *   seconds (one closed sooner counts as a failure). Close codes 4401 and 4403
 *   (credentials refused, forbidden) stop retrying: status "disconnected", reason
 *   "unauthorized" or "forbidden". Except: a 4401 on a connection that was up and
 *   signed in by the page's cookie (no `authKey`) connects again at once with
 *   `?require_user=1` (and every later try too), since the browser may hold a renewed
 *   session cookie (a password changed in this browser): signed in with it, or refused
 *   with 4401, then tried once more a second later (the renewed cookie may be on its
 *   way), then final. Close code 1012 on a connection that was up (the
 *   server is restarting, or lost its message-bus subscription) does not count as a
 *   failure: it retries after a random wait of up to `restartSpread` seconds (uniform;
 *   0: at once), so that one server's thousands of clients do not return in one instant;
 *   or later when the server's close reason advises it (`restartAdvice`).
 *   Only the first 1012 in a row is free: another before a connection has held for
 *   `stableAfter` seconds is backed off like a failure.
 *   `StreamingConnectionHandler` gives the same the Python client's (and
 *   Serverpod's) shape: `listener(state)`, `connect()`, `dispose()`.
 * - Every data frame is buffered from the moment the socket opens, per endpoint, so
 *   nothing is lost between opening and iterating. Each buffer holds `bufferSize`
 *   messages; when full, the OLDEST message is dropped and the gap is reported where it
 *   is: the next read of that stream rejects with `StreamOverflow` (`dropped`: how
 *   many), once, then reading goes on with the messages kept (as the Python client
 *   does). `ref.dropped` counts every drop. Streams survive reconnects.
 * - Messages are plain `{className, data}` objects, unless their class was registered
 *   (`registerClass`): then they are instances of it, decoded by the wire rules of
 *   docs/protocol.md ("Types on the wire"); one that does not decode is reported as
 *   `UndecodableMessage` and not put on the stream.
 * - `sendStreamMessage` throws `NotConnected` unless the status is "connected"; nothing
 *   is queued or dropped silently. Server `error` frames become `ServerError`s.
 * - Streaming methods: `await client.endpoint("chat").call("history", {with_user: 2})`
 *   resolves with the method's value; `for await (const v of ref.call("watch", {...}))`
 *   iterates a stream (leaving the loop cancels the call on the server); arguments that
 *   are async iterables are input streams. At most `credit` (64) values wait in the
 *   page; more are granted as the loop reads. A failed call rejects with the `CallFailed`
 *   error (`code`, `message`, `errors`, `exception`); a call does not outlive its socket.
 */

/** The connection states, as `status.state` carries them. */
export const StreamingConnectionStatus = Object.freeze({
  connecting: "connecting",
  connected: "connected",
  waitingToRetry: "waitingToRetry",
  disconnected: "disconnected",
});

/** Close codes the server uses (docs/protocol.md; Python: `streaming.protocol.CloseCode`). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  SERVICE_RESTART: 1012,
  POLICY: 4008,
  TOO_BIG: 4009,
  OVERLOADED: 4013,
  TOO_MANY_CONNECTIONS: 4029,
  UNAUTHORIZED: 4401,
  FORBIDDEN: 4403,
});

/** Close codes after which retrying with the same credentials is pointless. */
const FINAL_CLOSE_CODES = new Map([
  [CloseCode.UNAUTHORIZED, "unauthorized"],
  [CloseCode.FORBIDDEN, "forbidden"],
]);

/** What a close code means, for `DisconnectReason.message` (as the Python client words it). */
const CLOSE_MEANINGS = new Map([
  [1000, "closed normally"],
  [1001, "the server is going away"],
  [1006, "the connection was lost"],
  [1011, "the server hit an internal error"],
  [CloseCode.SERVICE_RESTART, "the server is restarting"],
  [CloseCode.POLICY, "closed for flooding (policy)"],
  [CloseCode.TOO_BIG, "a frame was too large"],
  [CloseCode.OVERLOADED, "the client did not read fast enough (overloaded)"],
  [CloseCode.TOO_MANY_CONNECTIONS, "too many connections for this user"],
  [CloseCode.UNAUTHORIZED, "credentials invalid or revoked"],
  [CloseCode.FORBIDDEN, "forbidden"],
]);

/** Longest frame `id` the server accepts (streaming/protocol.py MAX_ID_LENGTH). */
const MAX_ID_LENGTH = 128;

/** Most `{path, reason}` entries an `UndecodableMessage` lists (as the server's errors). */
const MAX_ERRORS = 20;

/** The key naming a nested object's class (docs/protocol.md, "Nested messages"). */
export const CLASS_NAME_KEY = "__className__";

const PING = JSON.stringify({command: "ping", args: {}});

const DEFAULT_RETRY = Object.freeze({
  min: 0.5,
  max: 30,
  factor: 2,
  jitter: 0.5,
  restartSpread: 1,
  stableAfter: 10,
});

/** Every option of `new Client(baseUrl, options)` with its default. Times in seconds. */
export const DEFAULTS = Object.freeze({
  pingInterval: 20,
  silenceTimeout: 40,
  connectTimeout: 10,
  retry: DEFAULT_RETRY,
  bufferSize: 1000,
  onError: null,
  authKey: null,
  raw: false,
});

// -- errors -----------------------------------------------------------------------------

/** Base class of every error this module raises or reports (Python: `ClientError`). */
export class StreampodError extends Error {
  constructor(message) {
    super(message);
    this.name = new.target.name;
  }
}

/** The Python client's name for `StreampodError`: the same class. */
export const ClientError = StreampodError;

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

/**
 * A streaming-method call that ended with `fail` (docs/protocol.md, "Streaming
 * methods"): `code`, `message`, `errors` (invalid arguments), and `exception`
 * (`{className, data}`) when the method raised an exception the app made serializable.
 */
export class CallFailed extends ServerError {
  constructor(args = {}) {
    super(args);
    this.name = "CallFailed";
    this.exception = isPlainObject(args.exception) ? args.exception : null;
  }
}

/**
 * Something the server sent that this client could not turn into a message (as the
 * Python client's `UndecodableMessage`): `code` is "malformed_frame" (not a Streampod
 * frame: see `MalformedFrame`), "invalid_message" (the data does not fit the registered
 * class; `errors` lists `{path, reason}`) or "unknown_class" (`decodeObject` of a name
 * nobody registered). `endpoint` is set when known. Reported, and not put on a stream.
 */
export class UndecodableMessage extends StreampodError {
  constructor(code, message, {endpoint = null, errors = null} = {}) {
    super(message);
    this.code = code;
    this.endpoint = endpoint;
    this.errors = errors;
  }
}

/** A frame the server sent that is not a Streampod frame (reported, then ignored). */
export class MalformedFrame extends UndecodableMessage {
  constructor(message) {
    super("malformed_frame", message);
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

  /** The Python client's name: the endpoint's name, or "errors" for `client.errors`. */
  get stream() {
    return this.endpoint ?? "errors";
  }
}

/**
 * Why `openStreamingConnection()` gave up: `reason` (as `status.reason`), `closeCode`
 * (close code or null). Also exported as `ConnectionFailed`, the Python client's name.
 */
export class ConnectionClosed extends StreampodError {
  constructor(reason, code = null) {
    super(`Streaming connection ${reason}` + (code === null ? "." : ` (close code ${code}).`));
    this.code = "connection_failed";
    this.reason = reason;
    this.closeCode = code;
  }
}

/** The Python client's name for `ConnectionClosed`: the same class. */
export const ConnectionFailed = ConnectionClosed;

/** `signIn()` was refused: `statusCode` 400 for wrong credentials, null when unreachable. */
export class SignInFailed extends StreampodError {
  constructor(message = "Unable to sign in with these credentials.", statusCode = null) {
    super(message);
    this.code = "sign_in_failed";
    this.statusCode = statusCode;
  }
}

/**
 * The `authKey` sent at a (re)connection was refused: the socket is anonymous (reported
 * on `client.errors` and to `onError`; `authenticate()` itself resolves null instead).
 */
export class AuthenticationFailed extends StreampodError {
  constructor(message = "The server refused the auth key: the connection is anonymous.") {
    super(message);
    this.code = "authentication_failed";
  }
}

/**
 * Why the last connection (or attempt) ended, as `client.disconnectReason` holds it:
 * `code` (close code, or null when the client dropped the socket itself), `reason` (as
 * `status.reason`: "lost", "silent", "stalled", "unauthorized"...), `message` (for people),
 * `byClient` (closed on purpose by the page), `isAuthFailure` (4401 or 4403: retrying
 * with the same credentials is pointless), `isServiceRestart` (1012: the server is
 * restarting; retried at once). `httpStatus` is always null: browsers do not
 * tell a page why a handshake was refused.
 */
export class DisconnectReason {
  constructor(code, reason, byClient = false) {
    this.code = code ?? null;
    this.reason = reason;
    this.byClient = byClient;
    this.httpStatus = null;
    if (byClient) this.message = "closed by the client";
    else if (this.code !== null) {
      this.message = `${CLOSE_MEANINGS.get(this.code) ?? "closed"} (close code ${this.code})`;
    } else this.message = `the connection was dropped (${reason})`;
    Object.freeze(this);
  }

  get isAuthFailure() {
    return FINAL_CLOSE_CODES.has(this.code);
  }

  /** 1012: the server shut down gracefully; the client reconnects soon (no backoff). */
  get isServiceRestart() {
    return this.code === CloseCode.SERVICE_RESTART;
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
/** The longest wait, in seconds, a 1012's advice may ask for (`after` + `spread`). */
export const MAX_RESTART_ADVICE = 600;

/**
 * `{after, spread}` (seconds) from a 1012's close reason ("restart after=2.5 spread=4",
 * docs/protocol.md): come back at a random moment between `after` and `after + spread`
 * seconds from now. 0 for what it does not say; the sum is at most `MAX_RESTART_ADVICE`.
 */
export function restartAdvice(reason) {
  const found = {};
  for (const m of String(reason ?? "").matchAll(/(?:^|\s)(after|spread)=([0-9]+(?:\.[0-9]+)?)(?=\s|$)/g)) {
    found[m[1]] = Number(m[2]);
  }
  const after = Math.min(found.after ?? 0, MAX_RESTART_ADVICE);
  const spread = Math.min(found.spread ?? 0, MAX_RESTART_ADVICE - after);
  return {after, spread};
}

export function backoffDelay(attempt, {min, max, factor, jitter}, random = Math.random) {
  const base = Math.min(max, min * factor ** attempt);
  return base * (1 - jitter * random());
}

function checkRetry(retry) {
  if (retry === false || retry === null) return null;
  if (retry === true || retry === undefined) return DEFAULT_RETRY;
  if (!isPlainObject(retry)) {
    throw new TypeError(
      "retry must be false or {min, max, factor, jitter, restartSpread, stableAfter}");
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
  for (const name of ["restartSpread", "stableAfter"]) {
    const value = merged[name];
    if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
      throw new TypeError(`retry.${name} must be a finite number >= 0`);
    }
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
  checkAuthKey(merged.authKey);
  if (typeof merged.raw !== "boolean") throw new TypeError("raw must be true or false");
  merged.retry = checkRetry(options.retry);
  return merged;
}

/** An auth key is the whole `Authorization` value, "Token <key>", or null (anonymous). */
function checkAuthKey(authKey) {
  if (authKey !== null && (typeof authKey !== "string" || !authKey)) {
    throw new TypeError('An auth key is a non-empty string ("Token <key>") or null');
  }
  return authKey;
}

/** The server's HTTP base URL (with a trailing slash) for its socket URL. */
function httpBase(wsUrl) {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === "wss:" ? "https:" : "http:";
  url.pathname = url.pathname.replace(/websocket\/$/, "");
  return url.href;
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

/** Seconds before the second try of a renewal refused at once (see `_lost`). */
const RENEWAL_RETRY = 1;

/** `url` (a socket URL, no query) asking the server to sign the socket in or refuse it. */
function requireUserUrl(url) {
  return url + "?require_user=1";
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

// -- message classes ----------------------------------------------------------------------
//
// The Python client decodes every frame into an instance of the message class registered
// under its `className` (streaming.serialization). Here a page may do the same for the
// classes it registers; the others stay plain `{className, data}` objects. The wire rules
// are docs/protocol.md's ("Types on the wire"); what this side checks is documented in
// docs/clients.md ("Message classes").

/** Field types a class may declare besides message classes, lists and dicts. */
const SCALAR_TYPES = new Set(
  ["any", "string", "int", "float", "bool", "datetime", "bytes", "duration"]);

/** className -> {name, cls, own: {field: type} | null}; and cls -> the same entry. */
const classesByName = new Map();
const classesByClass = new Map();

function checkFieldType(type, where) {
  if (typeof type === "function") return type;
  if (typeof type === "string" && type) return type; // a scalar, or a class name (resolved late)
  if (Array.isArray(type) && type.length === 1) return {list: checkFieldType(type[0], where)};
  if (isPlainObject(type)) {
    const keys = Object.keys(type);
    if (keys.length === 1 && (keys[0] === "list" || keys[0] === "dict")) {
      return {[keys[0]]: checkFieldType(type[keys[0]], where)};
    }
  }
  throw new TypeError(`${where}: a field type is "string", "int", "float", "bool", "any", ` +
    '"datetime", "bytes", "duration", a message class (or its name), [type], {list: type} ' +
    `or {dict: type}, not ${JSON.stringify(type)}`);
}

/**
 * Register a message class, so that frames of that `className` decode into instances of
 * it and its instances can be sent as they are (as the Python client does with
 * `SerializableEntity` subclasses). Two forms:
 *
 *     registerClass("ChatMessage", ChatMessage, {fields: {text: "string", ...}});
 *     registerClass(ChatMessage);   // name: static `className`, else the class's name;
 *                                   // fields: static `fields`
 *
 * `fields` (optional) maps each field to its type; with it, missing fields decode as
 * null, undeclared keys are dropped, and datetimes, bytes, nested messages are converted.
 * Without it the data's keys are copied as they are. A subclass's fields add to its
 * registered ancestors'. A class is registered under one name; a name holds one class
 * (registering the same pair again does nothing, anything else is a `TypeError`).
 * Returns the class.
 */
export function registerClass(nameOrClass, cls = undefined, options = undefined) {
  let name;
  if (typeof nameOrClass === "string") {
    name = nameOrClass;
  } else {
    options = cls;
    cls = nameOrClass;
    name = typeof cls === "function" && Object.hasOwn(cls, "className") ? cls.className : cls?.name;
  }
  options ??= {};
  if (typeof cls !== "function" || !cls.prototype) {
    throw new TypeError("registerClass needs a class (a constructor function)");
  }
  if (typeof name !== "string" || !name) throw new TypeError("A class name is a non-empty string");
  if (!isPlainObject(options)) throw new TypeError("registerClass options must be a plain object");
  for (const key of Object.keys(options)) {
    if (key !== "fields") throw new TypeError(`Unknown registerClass option ${JSON.stringify(key)}`);
  }
  const declared = options.fields ?? (Object.hasOwn(cls, "fields") ? cls.fields : null);
  let own = null;
  if (declared !== null && declared !== undefined) {
    if (!isPlainObject(declared)) throw new TypeError(`${name}: fields must be a plain object`);
    own = {};
    for (const [field, type] of Object.entries(declared)) {
      if (field === CLASS_NAME_KEY) throw new TypeError(`${name}: ${CLASS_NAME_KEY} is not a field`);
      own[field] = checkFieldType(type, `${name}.${field}`);
    }
  }
  const byName = classesByName.get(name);
  const byClass = classesByClass.get(cls);
  if (byName && byName.cls !== cls) {
    throw new TypeError(`Class name ${JSON.stringify(name)} is already registered ` +
      `for another class (${byName.cls.name})`);
  }
  if (byClass && byClass.name !== name) {
    throw new TypeError(`${cls.name} is already registered as ${JSON.stringify(byClass.name)}`);
  }
  const entry = Object.freeze({name, cls, own});
  classesByName.set(name, entry);
  classesByClass.set(cls, entry);
  return cls;
}

/** The class registered under `className`, or undefined (Python: `get_class`). */
export function getClass(className) {
  return classesByName.get(className)?.cls;
}

/** `{className: class}` of every registered class (Python: `registered_classes`). */
export function registeredClasses() {
  return Object.fromEntries([...classesByName].map(([name, entry]) => [name, entry.cls]));
}

/** The registered name of `value`'s class (exactly its class), or undefined. */
function registeredName(value) {
  if (value === null || typeof value !== "object") return undefined;
  return classesByClass.get(value.constructor)?.name;
}

/** All declared fields of `cls` (its registered ancestors' first), or null if none. */
function fieldsOf(cls) {
  const chain = [];
  for (let c = cls; typeof c === "function" && c !== Function.prototype; c = Object.getPrototypeOf(c)) {
    chain.unshift(c);
  }
  let fields = null;
  for (const c of chain) {
    const own = classesByClass.get(c)?.own;
    if (own) fields = {...(fields ?? {}), ...own};
  }
  return fields;
}

/** A field type naming a message class: that class, or undefined for other types. */
function messageClassOf(type, path) {
  if (typeof type === "function") return type;
  if (typeof type !== "string" || SCALAR_TYPES.has(type)) return undefined;
  const cls = getClass(type);
  if (cls === undefined) {
    throw new TypeError(`${path}: field type ${JSON.stringify(type)} is not a registered class`);
  }
  return cls;
}

const ISO_DATETIME =
  /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})$/;
const BASE64_STANDARD = /^[A-Za-z0-9+/]*={0,2}$/;
const BASE64_URLSAFE = /^[A-Za-z0-9_-]*={0,2}$/;

/** Bytes from base64: standard or URL-safe alphabet (not mixed), padded or not. */
export function fromBase64(text) {
  if (typeof text !== "string" || !(BASE64_STANDARD.test(text) || BASE64_URLSAFE.test(text))) {
    throw new TypeError("should be base64 text (standard or URL-safe alphabet)");
  }
  const bare = text.replace(/=+$/, "").replace(/-/g, "+").replace(/_/g, "/");
  if (bare.length % 4 === 1) throw new TypeError("should be base64 text (bad length)");
  const binary = atob(bare + "=".repeat((4 - (bare.length % 4)) % 4));
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** Standard padded base64 (RFC 4648 section 4) of a Uint8Array, typed array or ArrayBuffer. */
export function toBase64(bytes) {
  const view = bytes instanceof ArrayBuffer ? new Uint8Array(bytes)
    : new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let binary = "";
  for (let i = 0; i < view.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, view.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function isBytes(value) {
  return value instanceof ArrayBuffer || ArrayBuffer.isView(value);
}

/** Decoding state: the `{path, reason}` of each field that did not fit. */
class Decoding {
  constructor() {
    this.errors = [];
    this.count = 0;
  }

  fail(path, reason) {
    this.count += 1;
    if (this.errors.length < MAX_ERRORS) this.errors.push({path: path || "(root)", reason});
    return null;
  }
}

const join = (path, key) => (path === "" ? String(key) : `${path}.${key}`);

function decodeValue(type, value, path, state) {
  if (value === undefined || value === null) return null; // missing and null alike
  if (Array.isArray(type)) type = {list: type[0]};
  if (isPlainObject(type)) {
    if ("list" in type) {
      if (!Array.isArray(value)) return state.fail(path, "should be a list");
      return value.map((item, i) => decodeValue(type.list, item, join(path, i), state));
    }
    if (!isPlainObject(value)) return state.fail(path, "should be an object");
    const out = {};
    for (const [key, item] of Object.entries(value)) {
      out[key] = decodeValue(type.dict, item, join(path, key), state);
    }
    return out;
  }
  switch (type) {
    case "any":
      return value;
    case "string":
      return typeof value === "string" ? value : state.fail(path, "should be a string");
    case "int":
      // Past 2^53 - 1 JSON.parse has already rounded the server's integer: refused, never
      // held wrong (an id one off). Such fields travel as strings (docs/protocol.md).
      if (!Number.isInteger(value)) return state.fail(path, "should be an integer");
      return Number.isSafeInteger(value) ? value
        : state.fail(path, "should be an integer JavaScript holds exactly (at most 2^53 - 1)");
    case "float":
      return typeof value === "number" ? value : state.fail(path, "should be a number");
    case "bool":
      return typeof value === "boolean" ? value : state.fail(path, "should be true or false");
    case "duration": // whole milliseconds, as the server sends a timedelta
      return Number.isInteger(value) ? value : state.fail(path, "should be whole milliseconds");
    case "datetime": {
      const date = typeof value === "string" && ISO_DATETIME.test(value) ? new Date(value) : null;
      if (date === null || Number.isNaN(date.getTime())) {
        return state.fail(path, "should be an ISO 8601 datetime with a timezone");
      }
      return date;
    }
    case "bytes":
      try {
        return fromBase64(value);
      } catch (error) {
        return state.fail(path, error.message);
      }
    default: {
      const declared = messageClassOf(type, path);
      if (!isPlainObject(value)) return state.fail(path, "should be an object");
      return decodeEntity(declared, value, path, state);
    }
  }
}

/** `data` as an instance of `declared` (or of the subclass its `__className__` names). */
function decodeEntity(declared, data, path, state) {
  let cls = declared;
  if (path !== "" && data[CLASS_NAME_KEY] !== undefined && data[CLASS_NAME_KEY] !== null) {
    const tag = data[CLASS_NAME_KEY];
    const where = join(path, CLASS_NAME_KEY);
    if (typeof tag !== "string") return state.fail(where, "__className__ should be a string");
    const named = getClass(tag);
    // A name this side does not know (a later version's subclass): the declared class.
    if (named !== undefined && named !== declared) {
      if (!(named.prototype instanceof declared)) {
        const expected = classesByClass.get(declared)?.name ?? declared.name;
        return state.fail(where, `${tag} is not a ${expected}`);
      }
      cls = named;
    }
  }
  if (typeof cls.fromJson === "function") {
    // The class decodes itself (Serverpod's `fromJson`), from the JSON as it came.
    try {
      return cls.fromJson(data);
    } catch (error) {
      return state.fail(path, `${cls.name}.fromJson failed: ${error.message}`);
    }
  }
  const fields = fieldsOf(cls);
  const values = {};
  if (fields === null) {
    for (const [key, value] of Object.entries(data)) {
      if (key !== CLASS_NAME_KEY) values[key] = value;
    }
  } else {
    // Declared fields only: a missing one is null, a key nobody declared is ignored.
    for (const [key, type] of Object.entries(fields)) {
      values[key] = decodeValue(type, data[key], join(path, key), state);
    }
  }
  return Object.assign(new cls(), values);
}

/**
 * An instance of the class registered as `className`, from a frame's `data` (Python:
 * `decode_object`). Throws `UndecodableMessage`: "unknown_class" when no class has that
 * name, "invalid_message" (with `errors`, `{path, reason}` per field) when the data does
 * not fit.
 */
export function decodeObject(className, data) {
  const cls = getClass(className);
  if (cls === undefined) {
    throw new UndecodableMessage("unknown_class",
      `No message class is registered as ${JSON.stringify(className)}.`);
  }
  if (!isPlainObject(data)) {
    throw new UndecodableMessage("invalid_message", `Invalid ${className}: data is not an object.`);
  }
  const state = new Decoding();
  let instance;
  try {
    instance = decodeEntity(cls, data, "", state);
  } catch (error) {
    // A class's constructor threw, or a field names a class nobody registered.
    throw new UndecodableMessage("invalid_message", `Invalid ${className}: ${error.message}`);
  }
  if (state.count) {
    throw new UndecodableMessage("invalid_message",
      `Invalid ${className}: ${state.count} field(s) failed validation.`, {errors: state.errors});
  }
  return instance;
}

function encodeValue(type, value) {
  if (value === undefined || value === null) return null; // null is written, never left out
  if (Array.isArray(type)) type = {list: type[0]};
  if (isPlainObject(type)) {
    if ("list" in type && Array.isArray(value)) return value.map((item) => encodeValue(type.list, item));
    if ("dict" in type && isPlainObject(value)) {
      return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, encodeValue(type.dict, v)]));
    }
    return encodeAny(value);
  }
  switch (type) {
    case "datetime":
      return value instanceof Date ? value.toISOString() : value;
    case "bytes":
      return isBytes(value) ? toBase64(value) : value;
    case "duration":
      return typeof value === "number" ? Math.trunc(value) : value;
    case "string": case "int": case "float": case "bool":
      return value;
    case "any":
      return encodeAny(value);
    default: {
      const declared = messageClassOf(type, "");
      return registeredName(value) === undefined ? encodeAny(value) : encodeEntity(value, declared);
    }
  }
}

/** Plain JSON for a value of no declared type: nested messages carry `__className__`. */
function encodeAny(value) {
  if (value === null || typeof value !== "object") return value;
  if (value instanceof Date) return value.toISOString();
  if (isBytes(value)) return toBase64(value);
  if (Array.isArray(value)) return value.map(encodeAny);
  if (registeredName(value) !== undefined) return encodeEntity(value, null);
  if (isPlainObject(value)) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, encodeAny(v)]));
  }
  return value; // anything else: its own toJSON, as JSON.stringify does
}

/**
 * The data of a registered instance. `declared`: the class the field expects (no
 * `__className__` when it is exactly that), null when unknown (always written),
 * undefined at the top level (never: `className` says it).
 */
function encodeEntity(value, declared) {
  const cls = value.constructor;
  const {name} = classesByClass.get(cls);
  let data;
  if (typeof value.toJson === "function") {
    data = value.toJson(); // the class encodes itself (Serverpod's `toJson`)
  } else {
    const fields = fieldsOf(cls);
    data = {};
    if (fields === null) {
      for (const [key, item] of Object.entries(value)) data[key] = encodeAny(item);
    } else {
      for (const [key, type] of Object.entries(fields)) data[key] = encodeValue(type, value[key]);
    }
  }
  if (declared === undefined || cls === declared) return data;
  return {[CLASS_NAME_KEY]: name, ...data}; // first, as Serverpod writes it
}

/**
 * `{className, data}` for an instance of a registered class (Python: `encode_object`,
 * which returns the same as JSON text). Throws `TypeError` for anything else.
 */
export function encodeObject(instance) {
  const className = registeredName(instance);
  if (className === undefined) {
    const what = instance?.constructor?.name ?? typeof instance;
    throw new TypeError(`${what} is not a registered message class (see registerClass)`);
  }
  return {className, data: encodeEntity(instance, undefined)};
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
   * one), or instances of their registered classes, in arrival order, buffered since the connection opened. It never ends by
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
   * Send `{className, data}`, or an instance of a registered class, to this endpoint;
   * `options.id` (a string of at most 128 characters) is echoed by any error about this
   * frame. Throws `NotConnected` unless the status is "connected", `TypeError` for
   * anything that is not a message. `Date` values are sent as UTC ISO 8601 (what the
   * server expects), bytes (`Uint8Array`, `ArrayBuffer`) as base64, nested instances of
   * registered classes with their `__className__`.
   */
  sendStreamMessage(message, {id} = {}) {
    let object;
    if (isPlainObject(message)) {
      if (typeof message.className !== "string" || !message.className) {
        throw new TypeError("A message is {className: <non-empty string>, data: <object>} " +
          "or an instance of a registered class");
      }
      if (!isPlainObject(message.data)) throw new TypeError("message.data must be a plain object");
      object = {className: message.className, data: encodeAny(message.data)};
    } else {
      object = encodeObject(message); // TypeError unless its class is registered
    }
    const frame = {endpoint: this.name, object};
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

  /**
   * Call the streaming method `method` of this endpoint with `args` (an object, by
   * name): a `MethodCall`, awaitable (the value; a stream's values as an array) and
   * async-iterable (a stream's values). `credit`: values that may wait in the page.
   */
  call(method, args = {}, {credit = DEFAULT_CREDIT} = {}) {
    return new MethodCall(this.client, this.name, method, args, credit);
  }
}

// -- streaming methods ----------------------------------------------------------------------

/** Values a stream may have waiting in the page before the page grants more. */
const DEFAULT_CREDIT = 64;
/** Endpoint streams a client holds (the app's own included) past which a message for a
 * new endpoint name is dropped and reported: else a server could fill the page. */
export const MAX_ENDPOINTS = 256;
const CALL_REPLIES = new Set(["value", "done", "fail", "credit"]);
let lastCallId = 0;

/** A value from the wire: `{className, data}` objects decoded when their class is registered. */
function callValue(value) {
  if (Array.isArray(value)) return value.map(callValue);
  if (!isPlainObject(value)) return value;
  const keys = Object.keys(value);
  if (keys.length === 2 && typeof value.className === "string" && isPlainObject(value.data)) {
    if (getClass(value.className) === undefined) return {className: value.className, data: value.data};
    return decodeObject(value.className, value.data);
  }
  // A dict[str, T]: its values decoded the same way (messages in it as their classes).
  return Object.fromEntries(keys.map((key) => [key, callValue(value[key])]));
}

/**
 * An argument or input value for the wire: registered instances as `{className, data}`,
 * in arrays, `Set`s (as arrays), `Map`s and plain objects (as objects) too.
 */
function callArgument(value) {
  if (Array.isArray(value) || value instanceof Set) return [...value].map(callArgument);
  if (registeredName(value) !== undefined) return encodeObject(value);
  if (value instanceof Map) {
    return Object.fromEntries([...value].map(([k, v]) => [String(k), callArgument(v)]));
  }
  if (isPlainObject(value)) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, callArgument(v)]));
  }
  return encodeAny(value);
}

function isAsyncIterable(value) {
  return value !== null && typeof value === "object" && typeof value[Symbol.asyncIterator] === "function";
}

/** One call of a streaming method (see `EndpointRef.call`). Started when first awaited or iterated. */
export class MethodCall {
  constructor(client, endpoint, method, args, credit) {
    if (!(Number.isInteger(credit) && credit >= 1)) throw new TypeError("credit must be an integer >= 1");
    this.client = client;
    this.endpoint = endpoint;
    this.method = method;
    this.credit = credit;
    this.id = null;
    this._args = {};
    this._streams = new Map();
    for (const [name, value] of Object.entries(args ?? {})) {
      if (isAsyncIterable(value)) this._streams.set(name, value);
      else this._args[name] = value;
    }
    this._conn = null;
    this._values = [];
    this._outcome = null; // {args} once done, {error} once failed
    this._wake = null;
    this._taken = 0;
    this._streamCredit = new Map([...this._streams.keys()].map((name) => [name, 0]));
    this._wakeStreams = []; // pumps waiting for credit
  }

  /** The method's value (a stream's values as an array); rejects with `CallFailed`. */
  async result() {
    this._start();
    try {
      const values = [];
      for (;;) {
        const step = await this._next();
        if (step.done) break;
        values.push(step.value);
      }
      return "value" in this._outcome.args ? callValue(this._outcome.args.value) : values;
    } finally {
      this.cancel();
    }
  }

  then(resolve, reject) {
    return this.result().then(resolve, reject);
  }

  [Symbol.asyncIterator]() {
    this._start();
    return {
      next: () => this._next(),
      return: async () => {
        this.cancel();
        return {done: true, value: undefined};
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  /** Stop the call (nothing once it has ended): the server closes its generator. */
  cancel() {
    if (this.id === null || this._outcome !== null) return;
    this._end({args: {}});
    this._send({command: "cancel", args: {id: this.id}});
  }

  _start() {
    if (this.id !== null) return;
    const conn = this.client._conn;
    if (conn === null || !this.client.isConnected) {
      throw new NotConnected(`Cannot call ${this.endpoint}.${this.method}: not connected.`);
    }
    const args = {};
    for (const [name, value] of Object.entries(this._args)) args[name] = callArgument(value);
    this.id = `c${++lastCallId}`;
    this._conn = conn;
    conn.calls.set(this.id, this);
    this.client._sendText(JSON.stringify({command: "call", args: {
      id: this.id, endpoint: this.endpoint, method: this.method, args, credit: this.credit,
      streams: [...this._streams.keys()]}}));
    for (const [name, iterable] of this._streams) this._pump(name, iterable);
  }

  async _next() {
    for (;;) {
      if (this._values.length) {
        const value = this._values.shift();
        this._taken += 1;
        if (this._taken >= Math.max(1, this.credit >> 1) && this._outcome === null) {
          this._send({command: "credit", args: {id: this.id, n: this._taken}});
          this._taken = 0;
        }
        if (value instanceof UndecodableMessage) throw value;
        return {done: false, value};
      }
      if (this._outcome !== null) {
        if (this._outcome.error) throw this._outcome.error;
        return {done: true, value: undefined};
      }
      await new Promise((resolve) => {
        this._wake = resolve;
      });
    }
  }

  _send(frame) {
    if (this.client._conn !== this._conn) return; // that socket is gone; so is the call
    try {
      this.client._sendText(JSON.stringify(frame));
    } catch (error) {
      if (!(error instanceof NotConnected)) throw error;
    }
  }

  async _pump(name, iterable) {
    const iterator = iterable[Symbol.asyncIterator]();
    const id = this.id;
    try {
      for (;;) {
        while (this._streamCredit.get(name) <= 0) {
          if (this._outcome !== null) return;
          await new Promise((resolve) => {
            this._wakeStreams = [...(this._wakeStreams ?? []), resolve];
          });
        }
        if (this._outcome !== null) return;
        let step;
        try {
          step = await iterator.next();
        } catch (error) {
          const message = (error && error.message) || String(error);
          this._send({command: "stream_error", args: {id, stream: name, message}});
          return;
        }
        if (step.done) {
          this._send({command: "stream_end", args: {id, stream: name}});
          return;
        }
        this._streamCredit.set(name, this._streamCredit.get(name) - 1);
        this._send({command: "stream_value", args: {id, stream: name, value: callArgument(step.value)}});
      }
    } finally {
      if (this._outcome !== null && typeof iterator.return === "function") {
        try {
          await iterator.return();
        } catch (error) {
          report(error);
        }
      }
    }
  }

  _receive(command, args) {
    if (this._outcome !== null) return;
    if (command === "value") {
      if (this._values.length >= this.credit) {
        // Past the credit granted (what waits here is at most the credit when the server
        // keeps to it): a server that does not must not fill the page's memory.
        this._refused({
          code: "rate_limited",
          message: `The server sent more than the ${this.credit} values of credit granted; ` +
            "the call was cancelled.",
        });
        return;
      }
      try {
        this._values.push(callValue(args.value));
      } catch (error) {
        if (!(error instanceof UndecodableMessage)) throw error;
        this._values.push(error);
      }
    } else if (command === "done") {
      this._end({args});
    } else if (command === "fail") {
      this._end({error: new CallFailed(args)});
    } else if (command === "credit" && this._streamCredit.has(args.stream)) {
      this._streamCredit.set(args.stream, this._streamCredit.get(args.stream) + args.n);
      this._wakeAll();
    }
    this._notify();
  }

  /** A frame of this call was refused at the edge: the call ends with that error. */
  _refused(error) {
    if (this._outcome !== null) return;
    this._end({error: new CallFailed({code: error.code, message: error.message, id: this.id})});
    this._send({command: "cancel", args: {id: this.id}});
  }

  _end(outcome) {
    if (this._outcome !== null) return;
    this._outcome = outcome;
    if (this._conn !== null && this._conn.calls.get(this.id) === this) this._conn.calls.delete(this.id);
    this._notify();
    this._wakeAll();
  }

  _notify() {
    const wake = this._wake;
    this._wake = null;
    if (wake) wake();
  }

  _wakeAll() {
    const wakes = this._wakeStreams ?? [];
    this._wakeStreams = [];
    for (const wake of wakes) wake();
  }
}

// -- the client -------------------------------------------------------------------------

/** The UTF-8 length of `text` (what `bufferedAmount` counts), without encoding it. */
function utf8Length(text) {
  let bytes = text.length;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0x80) bytes += c < 0x800 || (c >= 0xd800 && c <= 0xdfff) ? 1 : 2;
  }
  return bytes;
}

/** One live socket, its timers and its `auth` commands. */
class Connection {
  constructor(ws, renewal = false) {
    this.ws = ws;
    this.renewal = renewal; // opened with ?require_user=1 after a 4401 (_lost)
    this.ponged = false; // the first pong came
    this.connected = false; // ... and every auth command sent was answered
    this.upSince = 0; // performance.now() when it became connected
    this.pingedAt = -Infinity; // performance.now() of the last ping
    this.heardAt = -Infinity; // ... and of the last frame received
    // Whether what the page sends leaves the browser (see _stalled): bufferedAmount at the
    // last ping, UTF-8 bytes sent since, and since when nothing left while some waited.
    this.buffered = 0;
    this.sentBytes = 0;
    this.stalledSince = null;
    this.pingTimer = null;
    this.silenceTimer = null;
    this.connectTimer = null;
    // auth commands in order: {key, waiter: {resolve, reject} | null (sent by the client
    // itself at open)}; the first is in flight when `authSent` (one at a time).
    this.auths = [];
    this.authSent = false;
    this.userId = undefined; // the last auth answer on this socket
    this.calls = new Map(); // streaming-method calls in progress, by id (MethodCall)
  }

  /** The socket is gone: its calls reject with `NotConnected`. */
  endCalls() {
    for (const call of [...this.calls.values()]) {
      call._end({error: new NotConnected("The connection closed before the call ended.")});
    }
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
    /** Called with each error (`ServerError`, `UndecodableMessage`, `AuthenticationFailed`). */
    this.onError = this.options.onError;
    this._authKey = this.options.authKey;
    this._retry = this.options.retry; // a StreamingConnectionHandler may set its own
    this._handler = null;
    this._endpoints = new Map();
    this._errors = new BoundedQueue(
      this.options.bufferSize, (dropped) => new StreamOverflow(null, dropped));
    this._listeners = [];
    this._status = INITIAL_STATUS;
    this._disconnectReason = null;
    this._conn = null;
    this._wanted = false; // true between openStreamingConnection() and the end
    this._attempt = 0; // failed attempts since the last successful connection
    this._restarts = 0; // 1012s in a row on connections that did not hold (stableAfter)
    this._retryTimer = null;
    this._retryAt = 0; // performance.now() when the pending retry fires
    this._openers = []; // {resolve, reject} of pending openStreamingConnection() calls
    // Every try asks for a signed-in user (?require_user=1) once a renewal began (_lost),
    // until the page closes the connection: not served anonymously after a 4401.
    this._requireUser = false;
    this._renewalRefusals = 0; // 4401s at the handshake since the renewal began
  }

  /** The socket URL, by the Python client's name (`websocket_url`): the same as `url`. */
  get websocketUrl() {
    return this.url;
  }

  /** Where `signIn()` posts: `<server>/api/auth/token/`. */
  get authUrl() {
    return httpBase(this.url) + "api/auth/token/";
  }

  /** The current status: `{state, ...}` (frozen). */
  get status() {
    return this._status;
  }

  /** The state alone, as the Python client's `streaming_connection_status`. */
  get streamingConnectionStatus() {
    return this._status.state;
  }

  get isConnected() {
    return this._status.state === StreamingConnectionStatus.connected;
  }

  /** Seconds left before the next attempt while "waitingToRetry" (counts down), else null. */
  get retryInSeconds() {
    if (this._retryTimer === null) return null;
    return Math.max(0, (this._retryAt - performance.now()) / 1000);
  }

  /** Why the last connection or attempt ended (`DisconnectReason`); null while connected. */
  get disconnectReason() {
    return this._disconnectReason;
  }

  /** The key sent in the `auth` command on every socket ("Token <key>"), or null. */
  get authKey() {
    return this._authKey;
  }

  /**
   * The user id of the socket as the server's last `auth` answer on it gave it: a
   * number, null (anonymous: no key or a refused one), or undefined when no `auth` was
   * answered on the current socket (session-cookie authentication, or none yet).
   */
  get userId() {
    return this._conn === null ? undefined : this._conn.userId;
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
   * Errors reported by the server (`ServerError`), about what it sent
   * (`UndecodableMessage`, `MalformedFrame`) or a refused `authKey`
   * (`AuthenticationFailed`), as an async iterator: bounded like the endpoint streams
   * (the latest `bufferSize` are kept; a read after a gap rejects with `StreamOverflow`).
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

  /** `Client.registerClass(...)` is `registerClass(...)`: the registry is the module's. */
  static registerClass(...args) {
    return registerClass(...args);
  }

  // -- authentication --------------------------------------------------------------------

  /**
   * Use `authKey` ("Token <key>", or null for anonymous) from now on: it is sent in an
   * `auth` command on every socket, right after the first ping, and the status becomes
   * "connected" only once the server answered it.
   *
   * When a socket is open (or opening), resolves with the server's answer on it: the
   * user id, or null when the key was refused (the socket is then anonymous, not
   * closed); the server re-opens the endpoints for the new identity before it answers.
   * Rejects with `NotConnected` if the socket closes first. With no socket (not opened,
   * or waiting to retry), resolves null at once: the key goes with the next socket.
   * Calls take turns (the server takes one `auth` at a time).
   */
  authenticate(authKey) {
    this._authKey = checkAuthKey(authKey);
    const conn = this._conn;
    if (conn === null) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      conn.auths.push({key: authKey, waiter: {resolve, reject}});
      this._sendAuth(conn);
    });
  }

  /**
   * Get a DRF token with `POST <server>/api/auth/token/` (`{username, password}`; no
   * cookies are sent) and use it from now on, as `authenticate("Token <token>")` does;
   * resolves with what that resolves with. Rejects with `SignInFailed` (`statusCode`
   * 400 for wrong credentials, 429 when throttled, null when the server was unreachable).
   */
  async signIn(username, password) {
    if (typeof username !== "string" || typeof password !== "string") {
      throw new TypeError("signIn(username, password) takes two strings");
    }
    const url = this.authUrl;
    let response;
    try {
      response = await fetch(url, {
        method: "POST",
        headers: {"Content-Type": "application/json", "Accept": "application/json"},
        body: JSON.stringify({username, password}),
        credentials: "omit", // a session cookie would make Django ask for a CSRF token
      });
    } catch (error) {
      throw new SignInFailed(`Could not reach ${url}: ${error.message}`, null);
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      // not JSON: judged by the status below
    }
    if (response.status === 400) {
      const messages = isPlainObject(body)
        ? Object.values(body).filter(Array.isArray).flat().map(String) : [];
      throw new SignInFailed(
        messages.length ? messages.join(" ") : "Unable to sign in with these credentials.", 400);
    }
    const token = isPlainObject(body) ? body.token : undefined;
    if (response.status !== 200 || typeof token !== "string" || !token) {
      throw new SignInFailed(
        `${url} answered HTTP ${response.status} without a token.`, response.status);
    }
    return this.authenticate(`Token ${token}`);
  }

  _sendAuth(conn) {
    if (conn.authSent || !conn.auths.length || conn.ws.readyState !== WebSocket.OPEN) return;
    this._write(conn, JSON.stringify({command: "auth", args: {key: conn.auths[0].key}}));
    conn.authSent = true;
  }

  _authAnswered(conn, args) {
    if (!conn.authSent) return; // an answer to nothing we asked
    const {key, waiter} = conn.auths.shift();
    conn.authSent = false;
    const userId = Number.isInteger(args.user_id) ? args.user_id : null;
    conn.userId = userId;
    if (waiter !== null) waiter.resolve(userId);
    else if (userId === null && key !== null) this._reportError(new AuthenticationFailed());
    this._sendAuth(conn);
    this._maybeConnected(conn);
  }

  /** The server failed while handling our `auth` (an `internal_error` about no frame). */
  _authBroke(conn, error) {
    const {waiter} = conn.auths.shift();
    conn.authSent = false;
    if (waiter === null) {
      this._drop(conn, "auth failed"); // the identity is unknown: try the socket again
      return;
    }
    waiter.reject(error);
    this._sendAuth(conn);
    this._maybeConnected(conn);
  }

  _failAuths(conn) {
    const auths = conn.auths.splice(0);
    conn.authSent = false;
    for (const {waiter} of auths) {
      if (waiter !== null) {
        waiter.reject(new NotConnected("The connection closed before the server answered 'auth'."));
      }
    }
  }

  // -- opening and closing -----------------------------------------------------------------

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
    this._requireUser = false;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const conn = this._conn;
    if (conn !== null) this._forget(conn, CloseCode.NORMAL);
    this._giveUp("closed", CloseCode.NORMAL);
  }

  // -- connection lifecycle --------------------------------------------------------------

  _connect() {
    this._setStatus({state: StreamingConnectionStatus.connecting});
    const renewal = this._requireUser;
    let ws;
    try {
      ws = new WebSocket(renewal ? requireUserUrl(this.url) : this.url);
    } catch (error) {
      // E.g. a ws: URL from an https: page: the browser will refuse every retry too.
      report(error);
      this._wanted = false;
      this._giveUp("refused by the browser", null);
      return;
    }
    const conn = new Connection(ws, renewal);
    this._conn = conn;
    const {pingInterval, connectTimeout} = this.options;
    conn.connectTimer = setTimeout(() => this._drop(conn, "no answer"), connectTimeout * 1000);
    ws.onopen = () => {
      if (this._conn !== conn) return;
      this._ping(conn); // the first pong marks the connection usable...
      // ... once the token, which a browser cannot put in the handshake, is answered too.
      if (this._authKey !== null && !conn.auths.length) {
        conn.auths.push({key: this._authKey, waiter: null});
      }
      this._sendAuth(conn);
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
      // The code says what happened (daphne's ASGI close sends no reasons); a 1012's
      // reason may advise when to come back (restartAdvice).
      this._lost(conn, event.code, "lost", event.reason);
    };
    // An error event is always followed by a close event, which decides what happens.
    ws.onerror = () => {};
  }

  _ping(conn) {
    if (conn.ws.readyState !== WebSocket.OPEN) return;
    if (this._stalled(conn)) {
      this._drop(conn, "stalled");
      return;
    }
    this._write(conn, PING);
    conn.pingedAt = performance.now();
  }

  /** Send `text` on `conn`, counting its bytes for _stalled. */
  _write(conn, text) {
    conn.ws.send(text);
    conn.sentBytes += utf8Length(text);
  }

  /**
   * Whether nothing the page sent has left the browser for `silenceTimeout` while some
   * waited: the server stopped reading (frames still arriving prove nothing about this
   * direction). Judged at each ping from `bufferedAmount`, the bytes not yet handed to
   * the network, against the bytes sent since the last ping: a slow link drains, a
   * stuck one does not.
   */
  _stalled(conn) {
    const now = performance.now();
    const buffered = conn.ws.bufferedAmount;
    const drained = conn.buffered + conn.sentBytes - buffered;
    if (buffered > 0 && drained <= 0) conn.stalledSince ??= now;
    else conn.stalledSince = null;
    conn.buffered = buffered;
    conn.sentBytes = 0;
    return conn.stalledSince !== null
      && now - conn.stalledSince >= this.options.silenceTimeout * 1000;
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
    this._failAuths(conn);
    conn.endCalls();
    const ws = conn.ws;
    ws.onopen = ws.onmessage = ws.onclose = null;
    if (this._conn === conn) this._conn = null;
    try {
      ws.close(code);
    } catch (error) {
      report(error);
    }
  }

  _lost(conn, code, why, closeReason = "") {
    conn.stopTimers();
    this._failAuths(conn);
    conn.endCalls();
    if (this._conn === conn) this._conn = null;
    if (!this._wanted) return;
    if (code === CloseCode.UNAUTHORIZED && this._mayRenew(conn)) {
      this._requireUser = true; // this try and every later one, whatever ends this one
      this._renewalRefusals = 0;
      this._connect();
      return;
    }
    // A renewal refused at once may have raced the response that renews the cookie (the
    // server revokes the old session's sockets before that response reaches the page):
    // one more try, RENEWAL_RETRY seconds later, before the refusal is final.
    const renewalRetry = code === CloseCode.UNAUTHORIZED && this._requireUser
      && !conn.connected && this._renewalRefusals++ < 1;
    const final = renewalRetry ? undefined : FINAL_CLOSE_CODES.get(code);
    if (final !== undefined) {
      this._wanted = false;
      this._giveUp(final, code);
      return;
    }
    const retry = this._retry;
    if (retry === null) {
      this._wanted = false;
      this._giveUp(why, code);
      return;
    }
    this._disconnectReason = new DisconnectReason(code, why);
    // 1012 on a connection that was up: this server is restarting, others are up: come
    // back soon (not a failure), at a random moment of restartSpread, or all of that
    // server's clients would connect again in the same instant. A 1012 before the
    // connection was up is a failed attempt (a draining server refusing it): the backoff
    // applies, or a client would retry it at once for as long as the drain lasts
    // (thousands of times a second).
    // Only the first 1012 in a row is free: another before a connection held for
    // stableAfter (a server that keeps restarting, a Redis link that keeps dropping) is
    // backed off like failures (Chromium came back 75 times a second with restartSpread
    // 0, twice a second at the default, for ever).
    const held = conn.connected && performance.now() - conn.upSince >= retry.stableAfter * 1000;
    if (held) {
      // The backoff starts over after a connection that held, not after any that came
      // up: a server that closes each one once it is up (4013, 4008, 1011...) had every
      // client back 3 times a second, for ever (helper "chaos10").
      this._restarts = 0;
      this._attempt = 0;
    }
    const restart = code === CloseCode.SERVICE_RESTART && conn.connected;
    let delay;
    if (restart) {
      // The server may advise a later moment (its RESTART_RATE): the thousands of
      // sockets it closed would not all be admitted within a second.
      const {after, spread} = restartAdvice(closeReason);
      const advised = after + Math.max(retry.restartSpread, spread) * Math.random();
      this._restarts += 1;
      delay = this._restarts === 1
        ? advised
        : Math.max(advised, backoffDelay(this._restarts - 2, retry));
    } else {
      delay = backoffDelay(this._attempt, retry);
      if (renewalRetry) delay = Math.max(delay, RENEWAL_RETRY);
      this._attempt += 1;
    }
    this._retryAt = performance.now() + delay * 1000;
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      if (this._wanted && this._conn === null) this._connect();
    }, delay * 1000);
    this._setStatus({
      state: StreamingConnectionStatus.waitingToRetry,
      retryInSeconds: delay,
      attempt: this._attempt,
      code,
    });
  }

  /**
   * Whether a 4401 on `conn` is worth one more try at once, with `?require_user=1`: the
   * connection was up, signed in by the page's cookie (no `authKey`), and the browser
   * may hold a new one since (Django gives the session a new key at a password change in
   * this browser and at a login). The server signs the new socket in with it, or closes
   * it with 4401 before it is up, which stops the client as any 4401 does. A renewal
   * that is revoked again before it held for `stableAfter` is not renewed again.
   */
  _mayRenew(conn) {
    const retry = this._retry;
    if (retry === null || this._authKey !== null || !conn.connected) return false;
    return !conn.renewal || performance.now() - conn.upSince >= retry.stableAfter * 1000;
  }

  _giveUp(reason, code) {
    this._disconnectReason = new DisconnectReason(code, reason, reason === "closed");
    this._setStatus({state: StreamingConnectionStatus.disconnected, code: code ?? null, reason});
    const openers = this._openers.splice(0);
    for (const {reject} of openers) reject(new ConnectionClosed(reason, code ?? null));
  }

  _maybeConnected(conn) {
    if (conn.connected || !conn.ponged || conn.auths.length) return;
    conn.connected = true;
    conn.upSince = performance.now();
    clearTimeout(conn.connectTimer);
    this._disconnectReason = null;
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
    this._write(conn, text);
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
      if (CALL_REPLIES.has(frame.command)) {
        conn.calls.get(args.id)?._receive(frame.command, args);
        return;
      }
      if (frame.command === "pong") {
        conn.ponged = true;
        this._maybeConnected(conn);
      } else if (frame.command === "auth") {
        this._authAnswered(conn, args);
      } else if (frame.command === "error") {
        const error = new ServerError(args);
        this._reportError(error);
        conn.calls.get(error.id)?._refused(error); // a call's frame refused (rate_limited)
        if (conn.authSent && error.code === "internal_error" && error.endpoint === null &&
            error.id === null) {
          this._authBroke(conn, error);
        }
      }
      // Other commands need nothing here; later versions may add some.
      return;
    }
    const {endpoint, object} = frame;
    if (typeof endpoint !== "string" || !endpoint || !isPlainObject(object) ||
        typeof object.className !== "string" || !isPlainObject(object.data)) {
      this._reportError(new MalformedFrame("The server sent a data frame without " +
        "endpoint, object.className and object.data."));
      return;
    }
    if (!this._endpoints.has(endpoint) && this._endpoints.size >= MAX_ENDPOINTS) {
      // A stream for each name the server sends would let a server fill the page.
      this._reportError(new UndecodableMessage("unknown_endpoint",
        `A message for a new endpoint past the first ${MAX_ENDPOINTS}; it was dropped.`,
        {endpoint: endpoint.slice(0, 64)}));
      return;
    }
    let message;
    if (this.options.raw || getClass(object.className) === undefined) {
      message = {className: object.className, data: object.data};
      if (typeof frame.id === "string") message.id = frame.id;
    } else {
      try {
        message = decodeObject(object.className, object.data);
      } catch (error) {
        if (!(error instanceof UndecodableMessage)) throw error;
        error.endpoint = endpoint;
        this._reportError(error);
        return;
      }
    }
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

// -- the handler --------------------------------------------------------------------------

/**
 * What a `StreamingConnectionHandler` gives its listener: `status` (a state of
 * `StreamingConnectionStatus`) and, while "waitingToRetry", `retryInSeconds`: the whole
 * seconds left before the next attempt (else null).
 */
export class StreamingConnectionHandlerState {
  constructor(status, retryInSeconds = null) {
    this.status = status;
    this.retryInSeconds = retryInSeconds;
    Object.freeze(this);
  }
}

const HANDLER_OPTIONS = new Set([
  "listener",
  "minDelay",
  "maxDelay",
  "factor",
  "jitter",
  "restartSpread",
  "stableAfter",
]);

/**
 * The Python client's (and Serverpod's) shape for keeping the connection up:
 *
 *     const handler = new StreamingConnectionHandler(client, {listener: (state) => ...});
 *     handler.connect();
 *     ...
 *     await handler.dispose();
 *
 * `listener(state)` (a `StreamingConnectionHandlerState`) is called on every change of
 * status and once a second while waiting to retry (`retryInSeconds` counts down: 3, 2,
 * 1). The client already reconnects by itself; the handler opens it, makes it retry
 * with `minDelay`, `maxDelay`, `factor`, `jitter`, `restartSpread`, `stableAfter` (default: the
 * client's `retry`
 * option, or its defaults when that is false), and stops on `dispose()` or when the
 * client gives up (4401, 4403). `start()`/`close()` are the same as `connect()`/`dispose()`.
 */
export class StreamingConnectionHandler {
  constructor(client, options = {}) {
    if (!(client instanceof Client)) throw new TypeError("A handler needs a Client");
    if (!isPlainObject(options)) throw new TypeError("options must be a plain object");
    for (const key of Object.keys(options)) {
      if (!HANDLER_OPTIONS.has(key)) throw new TypeError(`Unknown option ${JSON.stringify(key)}`);
    }
    const {listener = null, minDelay, maxDelay, factor, jitter, restartSpread, stableAfter} =
      options;
    if (listener !== null && typeof listener !== "function") {
      throw new TypeError("listener must be a function or null");
    }
    const base = client.options.retry ?? DEFAULT_RETRY;
    this.client = client;
    this.listener = listener;
    this.retry = checkRetry({
      min: minDelay ?? base.min,
      max: maxDelay ?? Math.max(base.max, minDelay ?? 0),
      factor: factor ?? base.factor,
      jitter: jitter ?? base.jitter,
      restartSpread: restartSpread ?? base.restartSpread,
      stableAfter: stableAfter ?? base.stableAfter,
    });
    this._started = false;
    this._finished = false;
    this._timer = null;
    this._shown = null;
    this._onStatus = (status) => this._statusChanged(status);
    this._closed = new Promise((resolve) => {
      this._resolveClosed = resolve;
    });
  }

  /** The client's status now, with the whole seconds left while waiting to retry. */
  get state() {
    const status = this.client.status.state;
    const left = this.client.retryInSeconds;
    return new StreamingConnectionHandlerState(
      status,
      status === StreamingConnectionStatus.waitingToRetry && left !== null ? Math.ceil(left) : null,
    );
  }

  /** True from `connect()` until the handler stopped. */
  get running() {
    return this._started && !this._finished;
  }

  /** The wait before the next attempt after `failures` failures in a row (random jitter). */
  delayFor(failures) {
    return backoffDelay(Math.max(0, failures - 1), this.retry);
  }

  /** Open the client's connection and keep it up (once per handler). */
  connect() {
    if (this._started) throw new Error("A StreamingConnectionHandler is started only once");
    if (this.client._handler !== null) throw new Error("This client already has a handler");
    this._started = true;
    this.client._handler = this;
    this.client._retry = this.retry;
    this.client.addStreamingConnectionStatusListener(this._onStatus);
    // Rejections are the status's story (told to the listener): not unhandled errors.
    this.client.openStreamingConnection().catch(() => {});
  }

  start() {
    this.connect();
  }

  /** Stop retrying and close the connection; the promise resolves once stopped. */
  dispose() {
    if (this._started && !this._finished) {
      this.client.closeStreamingConnection(); // "disconnected": _statusChanged finishes
      this._finish();
    }
    return this._closed;
  }

  close() {
    return this.dispose();
  }

  /** Resolves once the handler stopped: `dispose()`, or the client gave up (4401, 4403). */
  waitClosed() {
    return this._closed;
  }

  _statusChanged(status) {
    clearTimeout(this._timer);
    this._timer = null;
    const state = this.state;
    this._shown = state.retryInSeconds;
    this._notify(state);
    if (status.state === StreamingConnectionStatus.waitingToRetry) this._tick();
    if (status.state === StreamingConnectionStatus.disconnected && !this.client._wanted) {
      this._finish();
    }
  }

  /** Tell the listener each time the whole seconds left change, until the attempt. */
  _tick() {
    const left = this.client.retryInSeconds;
    if (left === null || left <= 1) return;
    this._timer = setTimeout(() => {
      this._timer = null;
      if (this.client.status.state !== StreamingConnectionStatus.waitingToRetry) return;
      const state = this.state;
      if (state.retryInSeconds !== this._shown && state.retryInSeconds > 0) {
        this._shown = state.retryInSeconds;
        this._notify(state);
      }
      this._tick();
    }, (left - (Math.ceil(left) - 1)) * 1000);
  }

  _notify(state) {
    if (this.listener === null) return;
    try {
      this.listener(state);
    } catch (error) {
      report(error);
    }
  }

  _finish() {
    if (this._finished) return;
    this._finished = true;
    clearTimeout(this._timer);
    this._timer = null;
    const client = this.client;
    client.removeStreamingConnectionStatusListener(this._onStatus);
    if (client._handler === this) {
      client._handler = null;
      client._retry = client.options.retry;
    }
    this._resolveClosed();
  }
}
