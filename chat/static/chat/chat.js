// The chat page: people list, one conversation, composer, live delivery.
//
// Data flow:
//   REST  GET /api/users/                      -> the people list
//   socket chat.history({with_user, after})     -> a conversation's history and catch-up
//     (REST GET /api/chat/messages/?with=&after= while the socket is not Live)
//   socket endpoint "chat"                      -> ChatMessage, live, both directions
//   socket chat.typing({with_user})             -> "Bob is typing…" for the open conversation
//   socket chat.notify_typing({with_user})      <- at most every 2 s while typing
//
// Nothing is lost across reconnects: each conversation remembers `syncedId`, the id up
// to which it is known complete. Live messages advance it only while the socket has
// stayed up since the conversation's last fetch; after a reconnect the open
// conversation fetches `after=syncedId` (every page) and merges by id.
//
// Nothing typed is lost either: a message written while the socket is down is shown as
// queued ("Sends when Live") and goes out by itself, in order, as soon as the status is
// Live again; a click on it takes it back into the box instead.

import {Client, NotConnected, StreamingConnectionStatus as Status} from "/static/streaming/streampod.js";

const config = JSON.parse(document.getElementById("chat-config").textContent);
const me = config.me;

const $ = (id) => document.getElementById(id);
const ui = {
  app: $("app"),
  status: $("status"),
  people: $("people"),
  empty: $("empty-state"),
  head: $("conversation-head"),
  back: $("back"),
  peerAvatar: $("peer-avatar"),
  peerName: $("peer-name"),
  peerUsername: $("peer-username"),
  messages: $("messages"),
  composer: $("composer"),
  text: $("composer-text"),
  send: $("send"),
  limit: $("composer-limit"),
  limitCount: $("composer-count"),
  limitText: $("composer-limit-text"),
  split: $("composer-split"),
  typing: $("typing"),
  typingText: $("typing-text"),
  banner: $("connection-banner"),
  bannerText: $("connection-text"),
  bannerAction: $("connection-action"),
};

const STATUS_TEXT = {
  [Status.connecting]: "Connecting…",
  [Status.connected]: "Live",
  [Status.waitingToRetry]: "Reconnecting…",
  [Status.disconnected]: "Offline",
};
// The server's rule (chat.protocol): 1 to MAX_TEXT_LENGTH characters after stripping.
const MAX_TEXT_LENGTH = config.maxTextLength || 4000;
// The counter shows from 90% of the limit on.
const NEAR_LIMIT = Math.floor(MAX_TEXT_LENGTH * 0.9);
// A text over the limit may be sent as at most this many messages (the server's rate
// limit is 20 messages per 10 s).
const MAX_SPLIT_PARTS = 10;
const GROUP_WINDOW_MS = 3 * 60 * 1000;
// The conversation follows the newest message while it is scrolled to within this
// many pixels of the bottom.
const STICK_PX = 48;
const numberFormat = new Intl.NumberFormat();
// Messages one history call returns at most (the server's cap, chat.store.MAX_HISTORY).
const HISTORY_PAGE = 200;
// While the user types, tell the peer at most this often (the server drops signals over
// its per-user rate limit); the peer shows the indicator for the event's expires_in.
const TYPING_SIGNAL_MS = 2000;

// -- state ------------------------------------------------------------------------------

/** id -> {id, username, display_name, unread} */
const people = new Map();
/** peer id -> {messages: Map(id -> message), syncedId, syncEpoch, syncing, again} */
const conversations = new Map();
/** frame id -> {frameId, recipient_id, text, state: "queued"|"pending"|"failed", reason, epoch}
 * "queued": written while not connected, sent when Live; "pending": sent, not yet stored. */
const pending = new Map();
let openPeerId = null;
let connected = false;
let epoch = 0; // +1 each time the socket goes down
let frameCounter = 0;
let stickToBottom = true; // the open conversation follows its newest message
let signingOut = false;

function conversation(peerId) {
  let conv = conversations.get(peerId);
  if (!conv) {
    conv = {messages: new Map(), syncedId: 0, syncEpoch: -1, syncing: false, again: false};
    conversations.set(peerId, conv);
  }
  return conv;
}

const peerOf = (message) => (message.sender_id === me.id ? message.recipient_id : message.sender_id);

// -- HTTP -------------------------------------------------------------------------------

/** Leave for the sign-in page (which says why), coming back to this conversation. */
function goToSignIn() {
  signingOut = true;
  const next = window.location.pathname + window.location.hash;
  window.location.assign(`${config.loginUrl || "/login/"}?next=${encodeURIComponent(next)}&signed_out=1`);
}

async function getJSON(url) {
  const response = await fetch(url, {headers: {Accept: "application/json"}, credentials: "same-origin"});
  if (response.status === 401 || response.status === 403) {
    goToSignIn(); // the session ended (signed out elsewhere, deactivated)
    throw new Error("signed out");
  }
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

/** Every page of a list endpoint, following `next`. */
async function getAll(url) {
  const results = [];
  while (url) {
    const page = await getJSON(url);
    results.push(...page.results);
    url = page.next;
  }
  return results;
}

async function loadPeople() {
  const list = await getAll(config.usersUrl);
  const known = new Map(people);
  people.clear(); // in the server's order (by username)
  for (const person of list) {
    people.set(person.id, {...person, unread: known.has(person.id) ? known.get(person.id).unread : 0});
  }
  renderPeople();
}

/** The messages of the conversation with `peerId` after id `after`, oldest first: through
 * the socket's `history` method while Live, else over REST (every page of both). */
async function fetchAfter(peerId, after) {
  if (!connected) {
    return getAll(`${config.messagesUrl}?with=${peerId}&after=${after}&limit=${HISTORY_PAGE}`);
  }
  const results = [];
  for (;;) {
    const page = await chat.call("history", {with_user: peerId, after, limit: HISTORY_PAGE});
    // A page may end early (what fits in one frame to this socket): only an empty one
    // says the conversation is complete.
    if (page.length === 0) return results;
    results.push(...page.map((message) => message.data));
    after = results[results.length - 1].id;
  }
}

/** Fetch what the conversation with `peerId` lacks (`after=syncedId`) and merge it. */
async function sync(peerId) {
  const conv = conversation(peerId);
  if (conv.syncing) {
    conv.again = true; // a reconnect during a fetch: fetch once more when it ends
    return;
  }
  conv.syncing = true;
  try {
    do {
      conv.again = false;
      const startEpoch = connected ? epoch : -1;
      const fetched = await fetchAfter(peerId, conv.syncedId);
      for (const message of fetched) addMessage(message);
      const lastId = fetched.length ? fetched[fetched.length - 1].id : conv.syncedId;
      conv.syncedId = Math.max(conv.syncedId, lastId);
      conv.syncEpoch = startEpoch;
      settlePending(peerId, startEpoch);
      if (peerId === openPeerId) renderConversation();
    } while (conv.again);
  } catch (error) {
    console.error(error);
    toast("Could not load messages; retrying when the connection is back.");
  } finally {
    conv.syncing = false;
  }
}

// -- messages ---------------------------------------------------------------------------

/** Store a saved message; resolve the pending entry it acknowledges. */
function addMessage(message) {
  const conv = conversation(peerOf(message));
  if (conv.messages.has(message.id)) return false;
  conv.messages.set(message.id, message);
  if (message.sender_id === me.id) {
    // The server's copy of what this page sent is the acknowledgement; match it to the
    // oldest sent message with the same recipient and text (other devices' messages
    // match nothing and are simply shown; queued ones were not sent yet).
    for (const [frameId, entry] of pending) {
      if (entry.state !== "queued" && entry.recipient_id === message.recipient_id &&
          entry.text === message.text) {
        pending.delete(frameId);
        break;
      }
    }
  }
  return true;
}

/** After a sync of `peerId`'s conversation that started in epoch `syncEpoch`, messages
 * to them sent before a reconnect and still unacknowledged never reached the server:
 * mark them failed (click to send again). */
function settlePending(peerId, syncEpoch) {
  for (const entry of pending.values()) {
    if (entry.recipient_id === peerId && entry.state === "pending" && syncEpoch >= 0 &&
        entry.epoch < syncEpoch) {
      entry.state = "failed";
      entry.reason = "Not sent: the connection dropped. Click to retry.";
    }
  }
}

function receive(message) {
  if (message.className !== "ChatMessage") return;
  const data = message.data;
  const peerId = peerOf(data);
  const conv = conversation(peerId);
  const added = addMessage(data);
  if (connected && conv.syncEpoch === epoch) conv.syncedId = Math.max(conv.syncedId, data.id);
  if (data.sender_id === typingPeer) showTyping(false); // what they typed has arrived
  if (!added) return;
  if (peerId === openPeerId) {
    renderConversation();
  } else if (data.sender_id !== me.id) {
    const person = people.get(peerId);
    if (person) {
      person.unread += 1;
      renderPeople();
    } else {
      // Someone new (or an admin, listed once they write): load them, then count it.
      loadPeople().then(() => {
        const newcomer = people.get(peerId);
        if (newcomer && peerId !== openPeerId) {
          newcomer.unread += 1;
          renderPeople();
        }
      }).catch(console.error);
    }
  }
}

/** Characters as the server counts them: code points, after stripping. */
function textLength(text) {
  return [...text.trim()].length;
}

/** `text` cut into messages of at most `max` characters, at a line break or a space
 * in the last fifth of each part when there is one. */
function splitText(text, max = MAX_TEXT_LENGTH) {
  const chars = [...text.trim()];
  const parts = [];
  let start = 0;
  while (start < chars.length) {
    let end = Math.min(start + max, chars.length);
    if (end < chars.length) {
      const floor = start + Math.floor(max * 0.8);
      let cut = -1;
      for (let i = end; i > floor && cut < 0; i--) if (chars[i - 1] === "\n") cut = i;
      for (let i = end; i > floor && cut < 0; i--) if (/\s/.test(chars[i - 1])) cut = i;
      if (cut > 0) end = cut;
    }
    const part = chars.slice(start, end).join("").trim();
    if (part) parts.push(part);
    start = end;
  }
  return parts;
}

/** Send `text` to `peerId` now, or queue it until Live. False if there is nothing to send. */
function send(text, peerId = openPeerId) {
  const trimmed = text.trim();
  if (!trimmed || peerId === null) return false;
  if (textLength(trimmed) > MAX_TEXT_LENGTH) {
    toast(`Messages are at most ${numberFormat.format(MAX_TEXT_LENGTH)} characters.`);
    return false;
  }
  lastTypingSignal = 0; // the next keystroke tells the peer again
  const entry = {frameId: `m${++frameCounter}`, recipient_id: peerId, text: trimmed, state: "queued", epoch};
  pending.set(entry.frameId, entry);
  transmit(entry);
  if (peerId === openPeerId) stickToBottom = true; // show what I just wrote
  renderConversation();
  renderConnection();
  return true;
}

/** Put a queued message on the socket; false (still queued) while not connected. */
function transmit(entry) {
  if (!connected) return false;
  try {
    chat.sendStreamMessage(
      {className: "ChatMessage", data: {recipient_id: entry.recipient_id, text: entry.text}},
      {id: entry.frameId});
  } catch (error) {
    if (error instanceof NotConnected) return false;
    throw error;
  }
  entry.state = "pending";
  entry.epoch = epoch;
  return true;
}

/** Send the queued messages, oldest first (the status just became Live). */
function flushQueued() {
  let sent = 0;
  for (const entry of [...pending.values()]) {
    if (entry.state !== "queued") continue;
    if (!transmit(entry)) break;
    sent += 1;
  }
  if (sent) {
    renderConversation();
    renderConnection();
  }
}

const queuedCount = () => [...pending.values()].filter((entry) => entry.state === "queued").length;

/** Send a failed message again (it is shown, so it belongs to the open conversation). */
function resend(frameId) {
  const entry = pending.get(frameId);
  if (!entry || entry.state !== "failed" || entry.recipient_id !== openPeerId) return;
  pending.delete(frameId);
  send(entry.text, entry.recipient_id);
  renderConversation();
}

/** Take a queued message back into the box (before what is there). */
function unqueue(frameId) {
  const entry = pending.get(frameId);
  if (!entry || entry.state !== "queued") return;
  pending.delete(frameId);
  const draft = ui.text.value.trim();
  ui.text.value = draft ? `${entry.text}\n${draft}` : entry.text;
  composerChanged();
  renderConversation();
  renderConnection();
  ui.text.focus();
}

function onServerError(error) {
  const entry = error.id ? pending.get(error.id) : undefined;
  if (entry) {
    entry.state = "failed";
    entry.reason = describe(error);
    renderConversation();
  } else if (error.code !== "buffer_overflow") {
    toast(describe(error));
  }
}

function describe(error) {
  if (error.code === "rate_limited") {
    return `${error.message || "Too many messages; slow down."} Click to retry.`;
  }
  if (error.code === "invalid_message" && Array.isArray(error.errors) && error.errors.length) {
    const first = error.errors[0];
    if (first.path === "recipient_id") return "This person can no longer receive messages.";
    if (first.path === "text") return `Messages are 1 to ${MAX_TEXT_LENGTH} characters.`;
    return `${first.path}: ${first.reason}`;
  }
  return error.message || error.code || "Something went wrong.";
}

// -- typing -----------------------------------------------------------------------------
//
// The open conversation's peer typing to me: one `typing` call per open conversation while
// Live (its first event, typing=false, says it is listening), cancelled when another
// conversation opens; the socket dropping ends it, and going Live again starts it anew.

let typingCall = null;
let typingPeer = null; // whose typing the indicator is about
let typingTimer = null;
let lastTypingSignal = 0; // performance.now() of the last notify_typing

/** Show (for `seconds`) or hide "<peer> is typing…". */
function showTyping(on, seconds = 0) {
  clearTimeout(typingTimer);
  typingTimer = null;
  const person = people.get(typingPeer);
  const show = on && person !== undefined && typingPeer === openPeerId;
  ui.typing.hidden = !show;
  if (!show) return;
  ui.typingText.textContent = `${person.display_name} is typing…`;
  typingTimer = setTimeout(() => showTyping(false), seconds * 1000);
}

/** Listen to the open conversation's peer typing (again); stop listening to anyone else. */
function watchTyping() {
  if (typingCall && typingPeer === openPeerId) return;
  stopWatchingTyping();
  if (!connected || openPeerId === null) return;
  const peerId = openPeerId;
  const call = chat.call("typing", {with_user: peerId});
  typingCall = call;
  typingPeer = peerId;
  (async () => {
    try {
      for await (const event of call) {
        ui.typing.dataset.watching = String(peerId); // listening (the first event says so)
        if (event.data.user_id === peerId) showTyping(event.data.typing, event.data.expires_in);
      }
    } catch {
      // the socket dropped (the status listener starts it again) or it was cancelled
    } finally {
      if (typingCall === call) {
        typingCall = null;
        showTyping(false);
      }
    }
  })();
}

function stopWatchingTyping() {
  const call = typingCall;
  typingCall = null;
  delete ui.typing.dataset.watching;
  showTyping(false);
  typingPeer = null;
  call?.cancel();
}

/** The user is writing to the open conversation's peer: tell them, at most every 2 s. */
function signalTyping() {
  if (!connected || openPeerId === null || !ui.text.value.trim()) return;
  const now = performance.now();
  if (lastTypingSignal && now - lastTypingSignal < TYPING_SIGNAL_MS) return;
  lastTypingSignal = now;
  chat.call("notify_typing", {with_user: openPeerId}).then(null, () => {}); // best effort
}

// -- rendering --------------------------------------------------------------------------

function hue(id) {
  return (id * 67 + 200) % 360;
}

function avatar(el, person) {
  el.dataset.initial = (person.display_name || person.username || "?").trim().charAt(0).toUpperCase();
  el.style.setProperty("--hue", hue(person.id));
}

function renderPeople() {
  ui.people.replaceChildren();
  if (people.size === 0) {
    const li = document.createElement("li");
    li.className = "people-placeholder";
    li.textContent = "Nobody else is here yet.";
    ui.people.append(li);
    return;
  }
  for (const person of people.values()) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "person";
    button.dataset.userId = person.id;
    button.dataset.username = person.username;
    if (person.id === openPeerId) button.setAttribute("aria-current", "true");
    const face = document.createElement("span");
    face.className = "avatar";
    avatar(face, person);
    const text = document.createElement("span");
    text.className = "person-text";
    const name = document.createElement("span");
    name.className = "person-name";
    name.textContent = person.display_name;
    const username = document.createElement("span");
    username.className = "person-username";
    username.textContent = `@${person.username}`;
    text.append(name, username);
    button.append(face, text);
    if (person.unread > 0) {
      const badge = document.createElement("span");
      badge.className = "unread";
      badge.textContent = person.unread > 99 ? "99+" : String(person.unread);
      badge.setAttribute("aria-label", `${person.unread} unread`);
      button.append(badge);
    }
    button.addEventListener("click", () => openConversation(person.id));
    li.append(button);
    ui.people.append(li);
  }
}

const timeFormat = new Intl.DateTimeFormat(undefined, {hour: "2-digit", minute: "2-digit"});
const dayFormat = new Intl.DateTimeFormat(undefined, {weekday: "long", month: "short", day: "numeric"});

function dayLabel(date) {
  const today = new Date();
  const yesterday = new Date(today);
  yesterday.setDate(today.getDate() - 1);
  if (date.toDateString() === today.toDateString()) return "Today";
  if (date.toDateString() === yesterday.toDateString()) return "Yesterday";
  return dayFormat.format(date);
}

function messageItem({text, mine, meta, state, id, frameId}) {
  const li = document.createElement("li");
  li.className = "message" + (mine ? " mine" : "") + (state ? ` ${state}` : "");
  if (id !== undefined) li.dataset.id = id;
  if (frameId !== undefined) li.dataset.frameId = frameId;
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  bubble.textContent = text;
  const info = document.createElement("div");
  info.className = "meta";
  info.textContent = meta;
  li.append(bubble, info);
  return li;
}

function renderConversation() {
  if (openPeerId === null) return;
  const list = ui.messages;
  const conv = conversation(openPeerId);
  const items = [];
  let lastDay = null;
  const sorted = [...conv.messages.values()].sort((a, b) => a.id - b.id);
  sorted.forEach((message, index) => {
    const date = new Date(message.sent_at);
    const day = date.toDateString();
    if (day !== lastDay) {
      const sep = document.createElement("li");
      sep.className = "day";
      sep.textContent = dayLabel(date);
      items.push(sep);
      lastDay = day;
    }
    const item = messageItem({
      text: message.text,
      mine: message.sender_id === me.id,
      meta: timeFormat.format(date),
      id: message.id,
    });
    // A run of messages from one person within a few minutes shows its time once.
    const next = sorted[index + 1];
    if (next && next.sender_id === message.sender_id &&
        new Date(next.sent_at) - date < GROUP_WINDOW_MS) {
      item.classList.add("grouped");
    }
    items.push(item);
  });
  for (const entry of pending.values()) {
    if (entry.recipient_id !== openPeerId) continue;
    const meta = {
      failed: entry.reason,
      queued: "Sends when Live · click to edit",
      pending: "Sending…",
    }[entry.state];
    const item = messageItem({text: entry.text, mine: true, meta, state: entry.state, frameId: entry.frameId});
    if (entry.state === "failed") {
      item.title = "Click to send again";
      item.style.cursor = "pointer";
      item.addEventListener("click", () => resend(entry.frameId));
    } else if (entry.state === "queued") {
      item.title = "Not sent yet: click to take it back into the box";
      item.style.cursor = "pointer";
      item.addEventListener("click", () => unqueue(entry.frameId));
    }
    items.push(item);
  }
  if (items.length === 0) {
    const hint = document.createElement("li");
    hint.className = "day";
    hint.textContent = "No messages yet. Say hello!";
    items.push(hint);
  }
  list.replaceChildren(...items);
  if (stickToBottom || list.dataset.peer !== String(openPeerId)) scrollToBottom();
  list.dataset.peer = String(openPeerId);
}

// Following the newest message. Whether to follow is decided when the *user* scrolls,
// not when a message arrives: by then the list may have shrunk under a taller
// composer (a long draft, the counter, a phone keyboard), which looks like "scrolled
// up" but is not. Whenever the list changes size while following, it is pinned again.
function scrollToBottom() {
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

ui.messages.addEventListener("scroll", () => {
  const list = ui.messages;
  stickToBottom = list.scrollHeight - list.scrollTop - list.clientHeight <= STICK_PX;
});
new ResizeObserver(() => {
  if (stickToBottom && openPeerId !== null) scrollToBottom();
}).observe(ui.messages);

function openConversation(peerId, {focus = true} = {}) {
  const person = people.get(peerId);
  if (!person) return;
  openPeerId = peerId;
  person.unread = 0;
  history.replaceState(null, "", `#@${person.username}`);
  ui.app.dataset.view = "conversation";
  ui.empty.hidden = true;
  ui.head.hidden = ui.messages.hidden = ui.composer.hidden = false;
  avatar(ui.peerAvatar, person);
  ui.peerName.textContent = person.display_name;
  ui.peerUsername.textContent = `@${person.username}`;
  ui.text.placeholder = `Message ${person.display_name}`;
  ui.messages.dataset.peer = "";
  stickToBottom = true;
  lastTypingSignal = 0;
  renderPeople();
  renderConversation();
  sync(peerId);
  watchTyping();
  if (focus && window.matchMedia("(min-width: 721px)").matches) ui.text.focus();
}

function closeConversation() {
  openPeerId = null;
  stopWatchingTyping();
  ui.app.dataset.view = "people";
  history.replaceState(null, "", window.location.pathname);
  renderPeople();
}

// -- connection: status badge, countdown, banner ------------------------------------------

let shownStatus = null;
let retryDeadline = 0; // performance.now() when the pending retry fires
let countdownTimer = null;

const signedOutStatus = (status) =>
  status.state === Status.disconnected && status.reason === "unauthorized";

/** The badge and the banner for the client's current status. While waiting to retry,
 * the badge counts down: it is rendered again each time the whole seconds left change. */
function renderConnection() {
  const status = client.status;
  if (status !== shownStatus) {
    shownStatus = status;
    if (status.state === Status.waitingToRetry) {
      retryDeadline = performance.now() + (status.retryInSeconds || 0) * 1000;
    }
  }
  clearTimeout(countdownTimer);
  countdownTimer = null;

  let text = STATUS_TEXT[status.state] || status.state;
  if (status.state === Status.waitingToRetry) {
    const left = Math.max(0, (retryDeadline - performance.now()) / 1000);
    const whole = Math.ceil(left);
    if (whole >= 1) {
      text = `Reconnecting in ${whole} s…`;
      // Next change: when the time left drops to whole - 1.
      const ms = (left - (whole - 1)) * 1000 + 15;
      countdownTimer = setTimeout(renderConnection, ms);
    }
  } else if (signedOutStatus(status)) {
    text = "Signed out";
  }
  ui.status.dataset.status = status.state;
  ui.status.querySelector(".status-text").textContent = text;
  ui.status.title = status.reason ? `Connection ${status.reason}` : "";
  renderBanner(status);
}

/** Below the top bar while the connection is down: what happens to messages, and
 * "Retry now" (the client's backoff can make the next attempt half a minute away). */
function renderBanner(status) {
  let text = null;
  let action = null;
  const queued = queuedCount();
  const later = queued === 1
    ? "1 message will be sent once Live."
    : queued > 1 ? `${queued} messages will be sent once Live.` : "Messages you write now are sent once Live.";
  if (status.state === Status.waitingToRetry) {
    text = `Connection lost. ${later}`;
    action = "retry";
  } else if (status.state === Status.connecting && !ui.banner.hidden) {
    text = `Reconnecting… ${later}`;
    action = "retrying";
  } else if (signedOutStatus(status)) {
    text = "You were signed out.";
  } else if (status.state === Status.disconnected && status.reason !== "closed" && status.reason !== "not opened") {
    text = "The server refused the connection. Reload the page to try again.";
    action = "reload";
  }
  ui.banner.hidden = text === null;
  if (text === null) return;
  ui.bannerText.textContent = text;
  ui.banner.dataset.action = action || "";
  ui.bannerAction.hidden = action === null;
  ui.bannerAction.disabled = action === "retrying";
  ui.bannerAction.textContent = action === "reload" ? "Reload" : action === "retrying" ? "Retrying…" : "Retry now";
}

/** Connect now instead of at the end of the countdown. */
function retryNow() {
  if (client.status.state !== Status.waitingToRetry) return;
  client.openStreamingConnection().catch(() => {}); // the badge tells the story
}

ui.bannerAction.addEventListener("click", () => {
  if (ui.banner.dataset.action === "reload") window.location.reload();
  else retryNow();
});
// The network is back, or the user is looking again: no need to sit out the backoff.
window.addEventListener("online", retryNow);
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") retryNow();
});

/** The socket was closed for good with 4401: the session ended (signed out in another
 * tab, password changed, user deactivated). Go to the sign-in page, unless the session
 * still works over HTTP (only the socket was refused): then offer a reload. */
async function signedOut() {
  if (signingOut) return;
  signingOut = true;
  let response = null;
  try {
    response = await fetch(`${config.usersUrl}?limit=1`, {
      headers: {Accept: "application/json"}, credentials: "same-origin"});
  } catch {
    // unreachable: the sign-in page will say so
  }
  if (response && response.ok) {
    signingOut = false;
    ui.bannerText.textContent = "Live updates stopped: the server refused this session. Reload the page.";
    ui.banner.dataset.action = "reload";
    ui.bannerAction.hidden = false;
    ui.bannerAction.disabled = false;
    ui.bannerAction.textContent = "Reload";
    return;
  }
  goToSignIn();
}

let toastTimer = null;
function toast(text) {
  let el = document.querySelector(".toast");
  if (!el) {
    el = document.createElement("div");
    el.className = "toast";
    el.setAttribute("role", "alert");
    document.body.append(el);
  }
  el.textContent = text;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => el.remove(), 4000);
}

// -- wiring -----------------------------------------------------------------------------

const client = new Client(undefined, {onError: onServerError});
const chat = client.endpoint("chat");

client.addStreamingConnectionStatusListener((status) => {
  const nowConnected = status.state === Status.connected;
  if (connected && !nowConnected) epoch += 1; // live delivery has a gap from here
  connected = nowConnected;
  renderConnection();
  if (!nowConnected) stopWatchingTyping(); // the call ends with its socket
  if (nowConnected) {
    if (openPeerId !== null) sync(openPeerId); // fetch what was missed
    watchTyping();
    flushQueued(); // then send what was written meanwhile
  }
  if (signedOutStatus(status)) signedOut();
});

ui.back.addEventListener("click", closeConversation);

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  if (textLength(ui.text.value) > MAX_TEXT_LENGTH) {
    // Never cut silently: the counter says why, and offers to split.
    ui.limit.classList.remove("nudge");
    void ui.limit.offsetWidth; // restart the animation
    ui.limit.classList.add("nudge");
    return;
  }
  if (send(ui.text.value)) {
    ui.text.value = "";
    composerChanged();
  }
  ui.text.focus();
});

ui.split.addEventListener("click", () => {
  const parts = splitText(ui.text.value);
  if (parts.length > MAX_SPLIT_PARTS) return;
  for (const part of parts) send(part);
  ui.text.value = "";
  composerChanged();
  ui.text.focus();
});

ui.text.addEventListener("keydown", (event) => {
  // Enter sends; Shift+Enter makes a new line (and IME composition is left alone).
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});

function autosize() {
  ui.text.style.height = "auto";
  ui.text.style.height = `${Math.min(ui.text.scrollHeight + 2, 160)}px`;
}

/** The counter: hidden well below the limit, "3,700 / 4,000 · 300 left" near it, and
 * over it what happens instead (nothing is cut): Send is off, "Send as 3 messages". */
function renderLimit() {
  const count = textLength(ui.text.value);
  const over = count > MAX_TEXT_LENGTH;
  ui.limit.hidden = count < NEAR_LIMIT;
  ui.limit.dataset.count = String(count);
  ui.limit.dataset.state = over ? "over" : "near";
  ui.send.disabled = over;
  ui.text.setAttribute("aria-invalid", String(over));
  if (ui.limit.hidden) return;
  ui.limitCount.textContent = `${numberFormat.format(count)} / ${numberFormat.format(MAX_TEXT_LENGTH)}`;
  if (!over) {
    const left = MAX_TEXT_LENGTH - count;
    ui.limitText.textContent = `${numberFormat.format(left)} ${left === 1 ? "character" : "characters"} left`;
    ui.split.hidden = true;
    return;
  }
  const parts = splitText(ui.text.value).length;
  const excess = numberFormat.format(count - MAX_TEXT_LENGTH);
  if (parts <= MAX_SPLIT_PARTS) {
    ui.limitText.textContent = `Too long for one message (${excess} over). Shorten it, or`;
    ui.split.textContent = `send it as ${parts} messages`;
    ui.split.hidden = false;
  } else {
    ui.limitText.textContent = `Too long (${excess} over): messages are at most ` +
      `${numberFormat.format(MAX_TEXT_LENGTH)} characters. Shorten it to send it.`;
    ui.split.hidden = true;
  }
}

function composerChanged() {
  renderLimit();
  autosize();
}
ui.text.addEventListener("input", () => {
  composerChanged();
  signalTyping();
});

async function main() {
  client.openStreamingConnection().catch(() => {}); // the status badge tells the story
  renderConnection();
  (async () => {
    for await (const message of chat.stream) receive(message);
  })();
  await loadPeople();
  const wanted = decodeURIComponent(window.location.hash.replace(/^#@?/, ""));
  const match = [...people.values()].find((person) => person.username === wanted);
  if (match) openConversation(match.id, {focus: false});
}

main().catch((error) => {
  console.error(error);
  toast("Could not load the chat. Reload the page to try again.");
});
