// smtpsrv-inbox web UI: plain JavaScript, no build step. Message data is
// only ever put into the page with textContent (never innerHTML); message
// HTML is shown in a sandboxed iframe served with its own strict CSP.
"use strict";

const PAGE = 50;
const state = { start: 0, query: "", messages: [], total: 0, unread: 0, matching: 0, cursor: -1, current: null };
const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function who(a) {
  if (!a) return "";
  return a.Name ? `${a.Name} <${a.Address}>` : a.Address;
}

function when(iso) {
  const d = new Date(iso);
  if (isNaN(d)) return "";
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : d.toLocaleDateString();
}

async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["content-type"] = "application/json";
  }
  const r = await fetch(path, init);
  if (!r.ok) {
    let msg = r.statusText;
    try { msg = (await r.json()).Error || msg; } catch (_) { /* not JSON */ }
    throw new Error(msg);
  }
  return r;
}

async function load() {
  const q = state.query.trim();
  const path = q
    ? `/api/v1/search?query=${encodeURIComponent(q)}&start=${state.start}&limit=${PAGE}`
    : `/api/v1/messages?start=${state.start}&limit=${PAGE}`;
  try {
    const data = await (await api("GET", path)).json();
    state.messages = data.messages;
    state.total = data.total;
    state.unread = data.unread;
    state.matching = data.messages_count;
    renderList();
  } catch (e) {
    showListMessage(`Could not load: ${e.message}`);
  }
}

function showListMessage(text) {
  const list = $("list");
  list.replaceChildren(el("li", "empty", text));
}

function renderCounts() {
  const q = state.query.trim();
  $("counts").textContent = q
    ? `${state.matching} matching of ${state.total}`
    : `${state.total} messages, ${state.unread} unread`;
  document.title = state.unread ? `(${state.unread}) smtpsrv-inbox` : "smtpsrv-inbox";
  const last = Math.min(state.start + state.messages.length, q ? state.matching : state.total);
  $("page").textContent = state.messages.length ? `${state.start + 1}–${last}` : "";
  $("prev").disabled = state.start === 0;
  $("next").disabled = last >= (q ? state.matching : state.total);
}

function row(m) {
  const li = el("li");
  li.id = `msg-${m.ID}`;
  li.dataset.id = m.ID;
  li.tabIndex = 0;
  li.setAttribute("role", "option");
  if (!m.Read) li.classList.add("unread");
  if (state.current === m.ID) li.classList.add("selected");
  const top = el("div", "row");
  top.append(el("span", "from", who(m.From) || "(no sender)"), el("span", "date", when(m.Created)));
  const subject = el("div", "subject", m.Subject || "(no subject)");
  if (m.Attachments) subject.append(el("span", "clip", " \u{1F4CE}"));
  li.append(top, subject, el("div", "snippet", m.Snippet));
  li.addEventListener("click", () => openMessage(m.ID));
  return li;
}

function renderList() {
  const list = $("list");
  if (!state.messages.length) {
    showListMessage(state.query.trim() ? "No message matches." : "No messages yet. Send one to the SMTP port.");
  } else {
    list.replaceChildren(...state.messages.map(row));
  }
  renderCounts();
}

function setTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) {
    b.setAttribute("aria-selected", String(b.dataset.tab === name));
  }
  for (const t of ["html", "text", "headers", "raw"]) $(`tab-${t}`).hidden = t !== name;
}

async function openMessage(id) {
  let m;
  try {
    m = await (await api("GET", `/api/v1/message/${encodeURIComponent(id)}`)).json();
  } catch (e) {
    showListMessage(`Could not open: ${e.message}`);
    return;
  }
  state.current = m.ID;
  state.cursor = state.messages.findIndex((x) => x.ID === m.ID);
  const summary = state.messages[state.cursor];
  if (summary && !summary.Read) {
    summary.Read = true;
    state.unread = Math.max(0, state.unread - 1);
  }
  for (const li of document.querySelectorAll("#list li")) {
    li.classList.toggle("selected", li.dataset.id === m.ID);
    if (li.dataset.id === m.ID) li.classList.remove("unread");
  }
  renderCounts();
  document.body.classList.add("viewing");
  $("view-pane").hidden = false;
  $("subject").textContent = m.Subject || "(no subject)";
  const meta = $("meta");
  meta.replaceChildren();
  const add = (k, v) => { if (v) meta.append(el("dt", "", k), el("dd", "", v)); };
  add("From", who(m.From));
  add("To", m.To.map(who).join(", "));
  add("Cc", m.Cc.map(who).join(", "));
  add("Bcc", m.Bcc.map(who).join(", "));
  add("Reply-To", m.ReplyTo.map(who).join(", "));
  add("Date", new Date(m.Date).toLocaleString());
  const atts = $("attachments");
  atts.replaceChildren(...m.Attachments.map((a) => {
    const li = el("li");
    const link = el("a", "attachment", `${a.FileName || "attachment"} (${Math.ceil(a.Size / 1024)} KiB)`);
    link.href = `/api/v1/message/${m.ID}/part/${a.PartID}`;
    link.download = a.FileName || "attachment";
    li.append(link);
    return li;
  }));
  $("toggle-read").textContent = "Mark unread";
  $("download-raw").href = `/api/v1/message/${m.ID}/raw`;
  $("download-raw").download = `${m.ID}.eml`;
  $("tab-text").textContent = m.Text;
  const frame = $("html-frame");
  frame.src = m.HTML ? `/view/${m.ID}.html` : "about:blank";
  setTab(m.HTML ? "html" : "text");
  $("tabs").querySelector('[data-tab="html"]').disabled = !m.HTML;
  api("GET", `/api/v1/message/${m.ID}/headers`).then((r) => r.json()).then((h) => {
    $("tab-headers").replaceChildren(...Object.entries(h).flatMap(([k, vs]) => vs.map((v) => {
      const tr = el("tr");
      tr.append(el("td", "", k), el("td", "", v));
      return tr;
    })));
  }).catch(() => {});
  api("GET", `/api/v1/message/${m.ID}/raw`).then((r) => r.text()).then((t) => {
    $("tab-raw").textContent = t;
  }).catch(() => {});
}

function closeMessage() {
  state.current = null;
  document.body.classList.remove("viewing");
  $("view-pane").hidden = true;
  $("html-frame").src = "about:blank";
  for (const li of document.querySelectorAll("#list li.selected")) li.classList.remove("selected");
}

async function deleteCurrent() {
  if (!state.current) return;
  const id = state.current;
  await api("DELETE", "/api/v1/messages", { IDs: [id] });
  const next = state.messages[state.cursor + 1] || state.messages[state.cursor - 1];
  closeMessage();
  await load();
  if (next && state.messages.some((m) => m.ID === next.ID)) focusRow(next.ID);
}

async function toggleRead() {
  if (!state.current) return;
  const button = $("toggle-read");
  const read = button.textContent !== "Mark unread";
  await api("PUT", "/api/v1/messages", { IDs: [state.current], Read: read });
  button.textContent = read ? "Mark unread" : "Mark read";
  await load();
}

function focusRow(id) {
  const li = document.getElementById(`msg-${id}`);
  if (li) li.focus();
}

function move(delta) {
  if (!state.messages.length) return;
  const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.id : null;
  let i = state.messages.findIndex((m) => m.ID === (focused || state.current));
  i = i < 0 ? 0 : Math.min(state.messages.length - 1, Math.max(0, i + delta));
  state.cursor = i;
  focusRow(state.messages[i].ID);
}

let reloadTimer = null;
function reloadSoon() {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(load, 150);
}

function live() {
  const events = new EventSource("/api/events");
  events.addEventListener("new", (e) => {
    const m = JSON.parse(e.data);
    if (state.start === 0 && !state.query.trim()) {
      if (!state.messages.some((x) => x.ID === m.ID)) {
        state.messages.unshift(m);
        if (state.messages.length > PAGE) state.messages.pop();
        renderList();
      }
    } else {
      reloadSoon();
    }
  });
  events.addEventListener("changed", reloadSoon);
  events.addEventListener("stats", (e) => {
    const s = JSON.parse(e.data);
    state.total = s.total;
    state.unread = s.unread;
    renderCounts();
  });
  // Sent once the server subscribed us (also after a reconnect): reload
  // what may have been stored before.
  events.addEventListener("ready", reloadSoon);
}

function init() {
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.query = $("search").value;
    state.start = 0;
    closeMessage();
    load();
  });
  $("search").addEventListener("search", () => {
    if (!$("search").value) { state.query = ""; state.start = 0; load(); }
  });
  $("home").addEventListener("click", (e) => {
    e.preventDefault();
    $("search").value = "";
    state.query = "";
    state.start = 0;
    closeMessage();
    load();
  });
  $("prev").addEventListener("click", () => { state.start = Math.max(0, state.start - PAGE); load(); });
  $("next").addEventListener("click", () => { state.start += PAGE; load(); });
  $("back").addEventListener("click", closeMessage);
  $("delete").addEventListener("click", deleteCurrent);
  $("toggle-read").addEventListener("click", toggleRead);
  $("read-all").addEventListener("click", async () => {
    await api("PUT", "/api/v1/messages", { Read: true });
    load();
  });
  $("delete-all").addEventListener("click", async () => {
    const q = state.query.trim();
    if (!confirm(q ? `Delete every message matching “${q}”?` : "Delete every message?")) return;
    if (q) await api("DELETE", `/api/v1/search?query=${encodeURIComponent(q)}`);
    else await api("DELETE", "/api/v1/messages", {});
    closeMessage();
    load();
  });
  for (const b of document.querySelectorAll("#tabs button")) {
    b.addEventListener("click", () => setTab(b.dataset.tab));
  }
  document.addEventListener("keydown", (e) => {
    const typing = e.target instanceof HTMLInputElement;
    if (typing) {
      if (e.key === "Escape") e.target.blur();
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    switch (e.key) {
      case "/": e.preventDefault(); $("search").focus(); break;
      case "j": case "ArrowDown": e.preventDefault(); move(1); break;
      case "k": case "ArrowUp": e.preventDefault(); move(-1); break;
      case "Enter": {
        const id = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.id : null;
        if (id) { e.preventDefault(); openMessage(id); }
        break;
      }
      case "Escape": closeMessage(); if (state.cursor >= 0 && state.messages[state.cursor]) focusRow(state.messages[state.cursor].ID); break;
      case "Delete": case "#": deleteCurrent(); break;
      case "u": toggleRead(); break;
      default: break;
    }
  });
  load();
  live();
}

document.addEventListener("DOMContentLoaded", init);
