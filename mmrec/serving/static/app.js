// mmrec page: plain JavaScript against the service's JSON API (no build step, no CDN).
"use strict";
const $ = (id) => document.getElementById(id);
const PLACEHOLDER = "/static/placeholder.svg";
const state = { mode: "user", user: null, liked: [], query: "" };

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}
function clearError() { $("error").hidden = true; $("error").textContent = ""; }

async function api(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error("the service cannot be reached (" + err.message + ")");
  }
  let body = null;
  try { body = await response.json(); } catch (err) { body = null; }
  if (!response.ok) {
    throw new Error((body && body.error) || ("the service answered " + response.status));
  }
  return body;
}

function image(url, alt) {
  const img = document.createElement("img");
  img.alt = alt;
  img.loading = "lazy";
  img.src = url || PLACEHOLDER;
  img.onerror = () => { if (!img.src.endsWith(PLACEHOLDER)) img.src = PLACEHOLDER; };
  return img;
}

function card(item, extra) {
  const div = document.createElement("div");
  div.className = "card";
  div.dataset.item = item.item;
  div.appendChild(image(item.image, item.title));
  const body = document.createElement("div");
  body.className = "body";
  const title = document.createElement("span");
  title.className = "title";
  title.textContent = item.title || item.item;
  body.appendChild(title);
  for (const [cls, text] of extra || []) {
    if (!text) continue;
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    body.appendChild(span);
  }
  div.appendChild(body);
  return div;
}

function diversity() { return parseFloat($("diversity").value); }
function k() { return parseInt($("k").value, 10); }

// Every list request takes the next number; a response is shown only if no later request was made
// (three quick likes send three requests, and an older answer must not replace a newer one).
let recsRequests = 0;

function renderRecs(data, note, liked) {
  const grid = $("recs");
  grid.dataset.liked = String(liked);  // how many liked items the list shown was asked with (0 for a user)
  grid.replaceChildren();
  for (const r of data.items) {
    const why = r.because_title ? "because of " + r.because_title : "";
    const score = (r.source === "content" ? "similarity " : "score ") + r.score.toFixed(4);
    grid.appendChild(card(r, [["meta", "#" + r.rank + " · " + score], ["why", why]]));
  }
  $("recs-note").textContent = note || (data.items.length ? "" : "no recommendations");
}

async function loadUser(user) {
  clearError();
  state.user = user;
  $("user-id").value = user;
  const request = ++recsRequests;
  try {
    const [history, recs] = await Promise.all([
      api("/users/" + encodeURIComponent(user) + "/history?limit=12"),
      api("/users/" + encodeURIComponent(user) + "/recommendations?k=" + k() + "&diversity=" + diversity()),
    ]);
    if (request !== recsRequests) return;  // a later request is on its way
    $("history-title").hidden = false;
    $("history").replaceChildren(...history.map((it) => card(it)));
    $("recs-title").textContent = "Recommended for user " + user;
    renderRecs(recs, "", 0);
  } catch (err) {
    showError(err.message);
  }
}

async function loadVisitor() {
  clearError();
  if (!state.liked.length && !state.query) {
    ++recsRequests;  // an answer still on its way is for likes no longer there
    $("recs").replaceChildren();
    $("recs-note").textContent = "like a few items or say what you look for";
    return;
  }
  const request = ++recsRequests;
  const liked = state.liked.length;
  try {
    const recs = await api("/recommendations", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ items: state.liked.map((x) => x.item), query: state.query || null,
                             k: k(), diversity: diversity() }),
    });
    if (request !== recsRequests) return;  // a later request is on its way
    $("recs-title").textContent = "Recommended for you";
    const fromContent = recs.items.some((r) => r.source === "content");
    renderRecs(recs, recs.notice || (fromContent ? "the model knows none of these items: similar items by content" : ""),
               liked);
  } catch (err) {
    showError(err.message);
  }
}

function renderLiked() {
  $("liked-box").hidden = state.liked.length === 0;
  $("liked").replaceChildren(...state.liked.map((it) => {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.textContent = it.title;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = "remove";
    remove.onclick = () => { state.liked = state.liked.filter((x) => x.item !== it.item); renderLiked(); loadVisitor(); };
    chip.appendChild(remove);
    return chip;
  }));
}

async function search(text) {
  clearError();
  try {
    const items = await api("/items?search=" + encodeURIComponent(text) + "&limit=12");
    $("search-results").replaceChildren(...items.map((it) => {
      const c = card(it, [["meta", it.popularity + " users"]]);
      const like = document.createElement("button");
      like.type = "button";
      like.className = "like";
      like.textContent = "Like";
      like.onclick = () => {
        if (!state.liked.some((x) => x.item === it.item)) state.liked.push({ item: it.item, title: it.title });
        renderLiked();
        loadVisitor();
      };
      c.appendChild(like);
      return c;
    }));
    if (!items.length) showError("no item title contains “" + text + "”");
  } catch (err) {
    showError(err.message);
  }
}

function refresh() { return state.mode === "user" ? (state.user ? loadUser(state.user) : null) : loadVisitor(); }

function setMode(mode) {
  state.mode = mode;
  $("tab-user").classList.toggle("active", mode === "user");
  $("tab-visitor").classList.toggle("active", mode === "visitor");
  $("user-panel").hidden = mode !== "user";
  $("visitor-panel").hidden = mode !== "visitor";
  // the heading names whom the list is for, in the tab shown
  $("recs-title").textContent = mode === "visitor" ? "Recommended for you"
    : (state.user ? "Recommended for user " + state.user : "Recommendations");
  $("recs").replaceChildren();
  $("recs-note").textContent = "";
  refresh();
}

async function init() {
  $("diversity").addEventListener("input", () => { $("diversity-value").textContent = diversity().toFixed(1); });
  $("diversity").addEventListener("change", refresh);
  $("k").addEventListener("change", refresh);
  $("tab-user").onclick = () => setMode("user");
  $("tab-visitor").onclick = () => setMode("visitor");
  $("user-form").onsubmit = (e) => { e.preventDefault(); const u = $("user-id").value.trim(); if (u) loadUser(u); };
  $("random-user").onclick = async () => {
    try { loadUser((await api("/users/random")).user); } catch (err) { showError(err.message); }
  };
  $("search-form").onsubmit = (e) => { e.preventDefault(); search($("search").value.trim()); };
  $("query-form").onsubmit = (e) => { e.preventDefault(); state.query = $("query").value.trim(); loadVisitor(); };
  try {
    const info = await api("/info");
    const metric = info.metrics["test/recall@20"];
    $("card").textContent = info.model + " on " + info.dataset + " · " + info.users + " users, " + info.items +
      " items" + (metric !== undefined ? " · test Recall@20 " + metric.toFixed(3) : "") +
      // which checkpoint is served: a best epoch far before the last says the budget or the rate was off
      (info.best_epoch !== null && info.best_epoch !== undefined && info.epochs_trained
        ? " (epoch " + (info.best_epoch + 1) + " of " + info.epochs_trained + ", selected on " + info.selected_on + ")" : "") +
      " · " + info.index +
      " retrieval, " + info.rerank + " re-ranking";
    if (!info.text_queries) $("query-form").hidden = true;
    // never an empty start: a random shopper's page, and their id shows what an id looks like
    const first = (await api("/users/random")).user;
    $("user-id").placeholder = "user id, e.g. " + first;
    if (!state.user && state.mode === "user") await loadUser(first);
  } catch (err) {
    showError(err.message);
  }
}
init();
