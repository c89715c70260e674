/* reco "be the user": pick a user, act on their top 10 through POST /v1/events, watch the model react.
   No dependencies. State: GET try/state (top-k with titles + when this user's feedback became visible). */
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const body = document.body;
  let key = sessionStorage.getItem("reco-try-key") || "";
  let writes = "off";
  let user = "";
  let state = null;      // last /try/state answer
  let pending = null;    // the last action, until the served model reflects it
  let marks = {};        // item_id -> {cls, text}: how the last action moved it
  let lastRendered = "";
  let timer = null;
  const prevTitles = {};  // item_id -> title, for items that left the list

  function setStatus(kind, text) { body.dataset.state = kind; $("status").textContent = text; }
  function readHeaders() { return key ? { "X-API-Key": key } : {}; }
  function esc(s) { const d = document.createElement("span"); d.textContent = s == null ? "" : String(s); return d; }

  async function getState(u, withUsers) {
    const url = "try/state?k=10&user=" + encodeURIComponent(u) + (withUsers ? "&users=1" : "");
    const r = await fetch(url, { headers: readHeaders(), cache: "no-store" });
    if (!r.ok) throw new Error("try/state answered " + r.status);
    return r.json();
  }

  function schedule(ms) { clearTimeout(timer); timer = setTimeout(refresh, ms); }

  async function refresh() {
    if (user) {
      try {
        const st = await getState(user, false);
        if (st.user_id === user) { state = st; render(st); checkPending(st); }
      } catch (e) { setStatus("error", "cannot reach the service: " + e.message); }
    }
    schedule(pending ? 250 : 1000);
  }

  function modelText(st) {
    if (st.version != null) return "model v" + st.version + (st.fallback ? " · popular items (the model does not know this user yet)" : " · personal");
    if (st.items.length) return "no model yet · popular so far";
    return "no model yet · waiting for the first events";
  }

  function render(st) {
    remember(st);
    body.dataset.version = st.version == null ? "" : String(st.version);
    if (st.version != null) setStatus("live", "live · model v" + st.version);
    else setStatus("waiting", st.items.length ? "no model yet (answering with popularity so far)" : "waiting for events…");
    $("for-user").textContent = st.user_id;
    $("model").textContent = modelText(st);
    const list = $("list");
    list.dataset.version = body.dataset.version;
    list.dataset.fallback = String(!!st.fallback);
    // Rebuild only when the list itself changed: a rebuild under the pointer would eat a click.
    const sig = JSON.stringify([st.fallback, st.items.map((i) => i.item_id), marks, pending && pending.item]);
    if (sig === lastRendered) {
      for (const it of st.items) {
        const score = list.querySelector('li[data-item="' + CSS.escape(it.item_id) + '"] .score');
        if (score) score.textContent = "score " + Number(it.score).toFixed(2);
      }
      return;
    }
    lastRendered = sig;
    list.replaceChildren();
    for (const it of st.items) {
      const li = document.createElement("li");
      li.dataset.item = it.item_id;
      if (pending && pending.item === it.item_id) li.className = "acted";
      const title = document.createElement("div");
      title.className = "title";
      title.append(esc(it.title));
      const meta = document.createElement("div");
      meta.className = "meta";
      meta.append(esc([it.category, it.item_id].filter(Boolean).join(" · ") + " · "));
      const score = esc("score " + Number(it.score).toFixed(2));
      score.className = "score";
      meta.append(score);
      const m = marks[it.item_id];
      if (m) { const s = esc(m.text); s.className = "mark " + m.cls; meta.append(s); }
      const actions = document.createElement("div");
      actions.className = "actions";
      actions.append(button("click", "click", it), stars(it), button("comment", "comment…", it));
      li.append(title, meta, actions);
      list.append(li);
    }
  }

  function button(action, label, it, rating) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.action = action;
    b.textContent = label;
    if (rating) { b.dataset.rating = String(rating); b.title = "rate " + rating + " of 5"; }
    b.addEventListener("click", () => {
      if (action === "comment") openComment(it);
      else act(action === "rate" ? "rating" : "click", it, rating, null);
    });
    return b;
  }

  function stars(it) {
    const span = document.createElement("span");
    span.className = "stars";
    for (let r = 1; r <= 5; r++) span.append(button("rate", r + "★", it, r));
    return span;
  }

  function openComment(it) {
    $("comment-box").hidden = false;
    $("comment-box").dataset.item = it.item_id;
    $("comment-title").textContent = it.title;
    $("comment-text").focus();
  }

  async function act(type, it, rating, text) {
    if (writes === "off") { $("action").textContent = "Writes are off on this service (no RECO_API_KEY configured)."; return; }
    if (writes === "ask") { key = $("api-key").value.trim(); sessionStorage.setItem("reco-try-key", key); }
    const ev = { type: type, user_id: user, item_id: it.item_id };
    if (rating) ev.rating = Number(rating);
    if (text) ev.text = text;
    const since = state ? state.server_time : Date.now() / 1000;
    const before = state ? state.items.map((i) => i.item_id) : [];
    const headers = Object.assign({ "content-type": "application/json" }, key ? { "X-API-Key": key } : {});
    let r, answer = {};
    try {
      r = await fetch("v1/events", { method: "POST", headers: headers, body: JSON.stringify([ev]) });
      answer = await r.json().catch(() => ({}));
    } catch (e) { $("action").textContent = "Could not post the event: " + e.message; return; }
    if (r.status !== 202 || !(answer.accepted || []).length) {
      const why = (answer.errors && answer.errors[0] && answer.errors[0].message) || answer.message || ("HTTP " + r.status);
      $("action").textContent = "Not accepted: " + why;
      return;
    }
    const what = type === "rating" ? "rated " + rating + "★" : type === "comment" ? "commented" + (rating ? " (" + rating + "★)" : "") + " on" : "clicked";
    pending = { item: it.item_id, title: it.title, since: since, before: before, t0: performance.now(), what: what };
    marks = {};
    lastRendered = "";
    $("action").textContent = "You " + what + " “" + it.title + "”. Waiting for the served model to learn it…";
    $("visible").textContent = "";
    $("visible").dataset.latency = "";
    $("visible").dataset.version = "";
    $("moved").replaceChildren();
    $("moved").dataset.changed = "";
    schedule(100);
  }

  function checkPending(st) {
    if (!pending) return;
    const hits = st.feedback.filter((f) => f.item_id === pending.item && f.published >= pending.since - 1);
    if (!hits.length) {
      $("visible").textContent = "";
      $("action").textContent = "You " + pending.what + " “" + pending.title + "”. Waiting for the served model… " +
        ((performance.now() - pending.t0) / 1000).toFixed(1) + " s";
      return;
    }
    const hit = hits[hits.length - 1];
    const v = $("visible");
    v.textContent = "visible after " + hit.latency_s.toFixed(2) + " s, model v" + hit.version;
    v.dataset.latency = String(hit.latency_s);
    v.dataset.version = String(hit.version);
    $("action").textContent = "You " + pending.what + " “" + pending.title + "”.";
    showMoves(pending.before, st.items);
    pending = null;
    lastRendered = "";
    render(st);
  }

  function showMoves(before, items) {
    const now = items.map((i) => i.item_id);
    const titles = {};
    for (const i of items) titles[i.item_id] = i.title;
    if (state) for (const i of state.items) titles[i.item_id] = i.title;
    marks = {};
    const out = [];
    now.forEach((id, idx) => {
      const was = before.indexOf(id);
      if (was < 0) marks[id] = { cls: "new", text: "new" };
      else if (was > idx) marks[id] = { cls: "up", text: "▲" + (was - idx) };
      else if (was < idx) marks[id] = { cls: "down", text: "▼" + (idx - was) };
    });
    const left = before.filter((id) => now.indexOf(id) < 0);
    const count = (cls) => Object.values(marks).filter((m) => m.cls === cls).length;
    const words = [[count("new"), "new in the top 10"], [count("up"), "moved up"], [count("down"), "moved down"], [left.length, "left"]]
      .filter(([n]) => n > 0).map(([n, w]) => n + " " + w);
    for (const [id, m] of Object.entries(marks)) { const s = esc((titles[id] || id) + " " + m.text); s.className = m.cls; out.push(s); }
    for (const id of left) { const s = esc((prevTitles[id] || id) + " left the top 10"); s.className = "down"; out.push(s); }
    const moved = $("moved");
    const summary = esc(words.length ? words.join(", ") + ":" : "no item moved");
    summary.className = "summary";
    const shown = out.slice(0, 8);
    if (out.length > shown.length) shown.push(esc("… and " + (out.length - shown.length) + " more"));
    moved.replaceChildren(summary, ...shown);
    moved.dataset.changed = String(out.length > 0);
  }

  function remember(st) { for (const i of st.items) prevTitles[i.item_id] = i.title; }

  function setUser(u) {
    user = u.trim().slice(0, 256);
    $("user").value = user;
    pending = null; marks = {}; lastRendered = ""; state = null;
    $("visible").textContent = ""; $("moved").replaceChildren(); $("comment-box").hidden = true;
    $("action").textContent = "Click an item, rate it 1–5 or write a comment: the list is recomputed by the served model after your feedback has gone through the loop.";
    const opt = Array.from($("user-pick").options).find((o) => o.value === user);
    $("user-pick").value = opt ? user : "";
    $("taste").textContent = opt && opt.dataset.taste ? opt.dataset.taste : (user.startsWith("me-") ? "a brand-new user: the model knows nothing about you yet" : "");
    history.replaceState(null, "", "#user=" + encodeURIComponent(user));
    schedule(0);
  }

  async function init() {
    try {
      const r = await fetch("try/session", { cache: "no-store" });
      const s = await r.json();
      writes = s.writes || "off";
      if (writes === "key") key = s.api_key;
      if (writes === "ask") { $("key-row").hidden = false; $("api-key").value = key; }
      if (writes === "off") $("action").textContent = s.message || "Writes are off on this service.";
    } catch (e) { setStatus("error", "cannot reach the service"); }
    let users = [];
    try { users = (await getState("", true)).users || []; } catch (e) { /* retried by refresh */ }
    const pick = $("user-pick");
    const first = document.createElement("option");
    first.value = ""; first.textContent = users.length ? "pick a user…" : "(type a user id)";
    pick.append(first);
    for (const u of users) {
      const o = document.createElement("option");
      o.value = u.user_id;
      const taste = (u.likes && u.likes.length ? "likes " + u.likes.join(", ") : "") + (u.dislikes ? " · dislikes " + u.dislikes : "");
      o.textContent = u.user_id + (taste ? " — " + taste : "");
      o.dataset.taste = taste;
      pick.append(o);
    }
    pick.addEventListener("change", () => { if (pick.value) setUser(pick.value); });
    $("user").addEventListener("change", () => setUser($("user").value));
    $("new-user").addEventListener("click", () => setUser("me-" + Math.random().toString(16).slice(2, 8)));
    $("comment-send").addEventListener("click", () => {
      const text = $("comment-text").value.trim();
      const item = $("comment-box").dataset.item;
      if (!text) { $("comment-text").focus(); return; }
      const it = (state && state.items.find((i) => i.item_id === item)) || { item_id: item, title: $("comment-title").textContent };
      $("comment-box").hidden = true;
      $("comment-text").value = "";
      act("comment", it, $("comment-rating").value || null, text);
    });
    $("comment-cancel").addEventListener("click", () => { $("comment-box").hidden = true; });
    const fromHash = decodeURIComponent((location.hash.match(/user=([^&]+)/) || [])[1] || "");
    setUser(fromHash || (users[0] && users[0].user_id) || "me-" + Math.random().toString(16).slice(2, 8));
  }

  init();
})();
