// The chat page: people list, one conversation, composer, live delivery.
//
// Data flow:
//   REST  GET /api/users/                      -> the people list
//   REST  GET /api/chat/messages/?with=&after=  -> a conversation's history and catch-up
//   socket endpoint "chat"                      -> ChatMessage, live, both directions
//
// Nothing is lost across reconnects: each conversation remembers `syncedId`, the id up
// to which it is known complete. Live messages advance it only while the socket has
// stayed up since the conversation's last fetch; after a reconnect the open
// conversation fetches `after=syncedId` (every page) and merges by id.

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
};

const STATUS_TEXT = {
  [Status.connecting]: "Connecting…",
  [Status.connected]: "Live",
  [Status.waitingToRetry]: "Reconnecting…",
  [Status.disconnected]: "Offline",
};
const MAX_TEXT_LENGTH = 4000;
const GROUP_WINDOW_MS = 3 * 60 * 1000;

// -- state ------------------------------------------------------------------------------

/** id -> {id, username, display_name, unread} */
const people = new Map();
/** peer id -> {messages: Map(id -> message), syncedId, syncEpoch, syncing, again} */
const conversations = new Map();
/** frame id -> {frameId, recipient_id, text, state: "pending"|"failed", reason, epoch} */
const pending = new Map();
let openPeerId = null;
let connected = false;
let epoch = 0; // +1 each time the socket goes down
let frameCounter = 0;

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

async function getJSON(url) {
  const response = await fetch(url, {headers: {Accept: "application/json"}, credentials: "same-origin"});
  if (response.status === 401 || response.status === 403) {
    window.location.assign("/login/?next=/"); // the session ended (signed out elsewhere)
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
  for (const person of list) {
    const known = people.get(person.id);
    people.set(person.id, {...person, unread: known ? known.unread : 0});
  }
  renderPeople();
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
      const url = `${config.messagesUrl}?with=${peerId}&after=${conv.syncedId}&limit=200`;
      const fetched = await getAll(url);
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
    // oldest pending message with the same recipient and text (other devices' messages
    // match nothing and are simply shown).
    for (const [frameId, entry] of pending) {
      if (entry.recipient_id === message.recipient_id && entry.text === message.text) {
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
  if (!added) return;
  if (peerId === openPeerId) {
    renderConversation();
  } else if (data.sender_id !== me.id) {
    const person = people.get(peerId);
    if (person) {
      person.unread += 1;
      renderPeople();
    } else {
      loadPeople().catch(console.error); // someone new
    }
  }
}

function send(text) {
  const trimmed = text.trim();
  if (!trimmed || openPeerId === null) return false;
  if (trimmed.length > MAX_TEXT_LENGTH) {
    toast(`Messages are at most ${MAX_TEXT_LENGTH} characters.`);
    return false;
  }
  const frameId = `m${++frameCounter}`;
  try {
    chat.sendStreamMessage(
      {className: "ChatMessage", data: {recipient_id: openPeerId, text: trimmed}}, {id: frameId});
  } catch (error) {
    if (error instanceof NotConnected) {
      toast("Not connected. Your message is still in the box; send it when Live.");
      return false;
    }
    throw error;
  }
  pending.set(frameId, {frameId, recipient_id: openPeerId, text: trimmed, state: "pending", epoch});
  renderConversation();
  return true;
}

/** Send a failed message again (it is shown, so it belongs to the open conversation). */
function resend(frameId) {
  const entry = pending.get(frameId);
  if (!entry || entry.state !== "failed" || entry.recipient_id !== openPeerId) return;
  pending.delete(frameId);
  if (!send(entry.text)) pending.set(frameId, entry); // still not connected: keep it
  renderConversation();
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
  const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
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
    const item = messageItem({
      text: entry.text,
      mine: true,
      meta: entry.state === "failed" ? entry.reason : "Sending…",
      state: entry.state,
      frameId: entry.frameId,
    });
    if (entry.state === "failed") {
      item.title = "Click to send again";
      item.style.cursor = "pointer";
      item.addEventListener("click", () => resend(entry.frameId));
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
  if (nearBottom || list.dataset.peer !== String(openPeerId)) list.scrollTop = list.scrollHeight;
  list.dataset.peer = String(openPeerId);
}

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
  renderPeople();
  renderConversation();
  sync(peerId);
  if (focus && window.matchMedia("(min-width: 721px)").matches) ui.text.focus();
}

function closeConversation() {
  openPeerId = null;
  ui.app.dataset.view = "people";
  history.replaceState(null, "", window.location.pathname);
  renderPeople();
}

function renderStatus(status) {
  ui.status.dataset.status = status.state;
  let text = STATUS_TEXT[status.state] || status.state;
  if (status.state === Status.waitingToRetry && typeof status.retryInSeconds === "number") {
    text = `Reconnecting in ${Math.max(1, Math.round(status.retryInSeconds))} s…`;
  } else if (status.state === Status.disconnected && status.reason === "unauthorized") {
    text = "Signed out";
  }
  ui.status.querySelector(".status-text").textContent = text;
  ui.status.title = status.reason ? `Connection ${status.reason}` : "";
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
  renderStatus(status);
  const nowConnected = status.state === Status.connected;
  if (connected && !nowConnected) epoch += 1; // live delivery has a gap from here
  connected = nowConnected;
  if (nowConnected && openPeerId !== null) sync(openPeerId); // fetch what was missed
  if (status.state === Status.disconnected && status.reason === "unauthorized") {
    toast("You were signed out.");
  }
});

ui.back.addEventListener("click", closeConversation);

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  if (send(ui.text.value)) {
    ui.text.value = "";
    autosize();
  }
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
ui.text.addEventListener("input", autosize);

async function main() {
  renderStatus(client.status);
  client.openStreamingConnection().catch(() => {}); // the status badge tells the story
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
