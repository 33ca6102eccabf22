// The search page (docs/serving.md, "The search page"): plain JavaScript, no
// build step, no network past this server. The address holds the query
// (?id=...&k=...&threshold=...&class=...&span=... or ?view=duplicates&page=N),
// so a search by id can be shared; an uploaded image cannot travel in it.
"use strict";

const MODEL = document.querySelector('meta[name="mae-tfx-model"]').content;

// Every route the page calls, each documented in docs/serving.md (a test reads
// this table). `v` is the version the page found at start: every later call
// names it, so a push mid-session never pairs one version's results with
// another's thumbnails.
const ROUTES = {
  searchIndex: () => `/v1/models/${MODEL}/search_index`,
  neighbors: (v) => `/v1/models/${MODEL}/versions/${v}:neighbors`,
  thumbnail: (v, id) => `/v1/models/${MODEL}/versions/${v}/thumbnails/${encodeId(id)}`,
  duplicates: (v, query) => `/v1/models/${MODEL}/versions/${v}/duplicates?${query}`,
};
const GROUPS_PER_PAGE = 10;

const $ = (id) => document.getElementById(id);
let index = null; // GET search_index: version, count, classes, spans, thumbnails
let upload = null; // the last uploaded image (base64), re-searched when a knob changes

// An id may hold "/": each segment is encoded, the slashes kept.
function encodeId(id) {
  return id.split("/").map(encodeURIComponent).join("/");
}

function setState(state) {
  document.body.dataset.state = state;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
  if (message) setState("error");
}

// fetch, JSON out; a failure becomes an Error carrying the server's own message.
async function call(url, body) {
  let response;
  try {
    response = await fetch(url, body === undefined ? {} : {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify(body),
    });
  } catch (e) {
    throw new Error(`The server did not answer (${e.message}): is \`make serve\` running?`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = JSON.parse(text);
  } catch (e) {
    data = null;
  }
  if (!response.ok) {
    const why = data && data.error ? data.error : text.slice(0, 300) || response.statusText;
    throw new Error(`${response.status}: ${why}`);
  }
  return data;
}

function params() {
  return new URLSearchParams(window.location.search);
}

function go(query) {
  history.pushState(null, "", query ? `?${query}` : window.location.pathname);
  render();
}

// ---- results ------------------------------------------------------------------
function card(hit) {
  const div = document.createElement("div");
  div.className = "result";
  const link = document.createElement("a");
  link.className = "picture";
  link.href = `?${similarQuery(hit.id)}`;
  link.title = `images similar to ${hit.id}`;
  if (index.thumbnails) {
    const img = document.createElement("img");
    img.className = "thumb";
    img.alt = hit.id;
    img.loading = "lazy";
    img.src = ROUTES.thumbnail(index.model_version, hit.id);
    link.append(img);
  } else {
    const none = document.createElement("span");
    none.className = "noimg";
    none.textContent = hit.id;
    link.append(none);
  }
  div.append(link);
  const lines = [
    ["score", hit.score.toFixed(3)],
    ["class", hit.class_name || "(no class)"],
    ["span", hit.span && index.spans.length > 1 ? `span ${hit.span}` : ""],
    ["id", hit.id],
  ];
  for (const [name, text] of lines) {
    if (!text) continue;
    const line = document.createElement("div");
    line.className = name;
    line.textContent = text;
    div.append(line);
  }
  const similar = document.createElement("a");
  similar.className = "similar";
  similar.href = link.href;
  similar.textContent = "similar";
  div.append(similar);
  return div;
}

function similarQuery(id) {
  const query = params();
  query.delete("view");
  query.delete("page");
  query.set("id", id);
  return query.toString();
}

function knobs() {
  const query = params();
  return {
    k: Math.max(1, Math.min(100, parseInt(query.get("k") || "12", 10) || 12)),
    threshold: query.get("threshold"),
    className: query.get("class") || "",
    span: query.get("span") || "",
  };
}

function request(queryPart) {
  const {k, threshold, className, span} = knobs();
  const body = Object.assign({k}, queryPart);
  if (threshold !== null && threshold !== "") body.threshold = parseFloat(threshold);
  const restricts = [];
  if (className) restricts.push({namespace: "class", allow: [className]});
  if (span) restricts.push({namespace: "span", allow: [span]});
  if (restricts.length) body.restricts = restricts;
  return body;
}

function showQuery(src, caption) {
  const box = $("query");
  box.replaceChildren();
  if (src) {
    const img = document.createElement("img");
    img.onerror = () => img.remove(); // not an image: the server's error says why
    img.src = src;
    img.alt = "the query";
    box.append(img);
  }
  const text = document.createElement("span");
  text.textContent = caption;
  box.append(text);
  box.hidden = false;
}

async function search() {
  const id = params().get("id");
  if (!id && !upload) {
    $("results").replaceChildren();
    $("query").hidden = true;
    $("status").textContent = `Search ${index.count} images: drop, paste or choose one, or open any result.`;
    setState("ready");
    return;
  }
  if (id) {
    upload = null;
    showQuery(index.thumbnails ? ROUTES.thumbnail(index.model_version, id) : null,
              `Images similar to ${id}`);
  }
  setState("loading");
  $("status").textContent = "Searching...";
  const start = performance.now();
  try {
    const body = request(id ? {ids: [id]} : {instances: [{b64: upload}]});
    const answer = await call(ROUTES.neighbors(index.model_version), body);
    const hits = answer.neighbors[0];
    $("results").replaceChildren(...hits.map(card));
    const ms = Math.round(performance.now() - start);
    $("status").textContent = hits.length
      ? `${hits.length} nearest of ${index.count} images (model version ${answer.model_version}, ${ms} ms)`
      : "No image passes the filters and the minimum score.";
    showError("");
    setState("ready");
  } catch (e) {
    $("results").replaceChildren();
    $("status").textContent = "";
    showError(e.message);
  }
}

function readImage(file) {
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    upload = reader.result.slice(reader.result.indexOf(",") + 1);
    const query = params();
    query.delete("id");
    query.delete("view");
    history.pushState(null, "", `?${query}`);
    showQuery(reader.result, `Images similar to ${file.name || "the pasted image"}`);
    showView("search");
    search();
  };
  reader.onerror = () => showError(`Could not read ${file.name}: ${reader.error}`);
  reader.readAsDataURL(file);
}

// ---- duplicates ------------------------------------------------------------------
async function reviewDuplicates() {
  const page = Math.max(1, parseInt(params().get("page") || "1", 10) || 1);
  const v = index.model_version;
  setState("loading");
  $("dup-summary").textContent = "Comparing every image with its nearest ones...";
  $("dup-csv").href = ROUTES.duplicates(v, "format=csv");
  $("dup-json").href = ROUTES.duplicates(v, "limit=0");
  try {
    const offset = (page - 1) * GROUPS_PER_PAGE;
    const answer = await call(ROUTES.duplicates(v, `offset=${offset}&limit=${GROUPS_PER_PAGE}`));
    const pages = Math.max(1, Math.ceil(answer.groups_total / GROUPS_PER_PAGE));
    const how = answer.projection ? "through the model's near-duplicate projection" : "on the embedding";
    $("dup-summary").textContent =
      `${answer.groups_total} groups of near-duplicates (${answer.images_in_groups} of ` +
      `${answer.images} images) at score >= ${answer.threshold.toFixed(3)}, compared ${how}; ` +
      "largest groups first.";
    const groups = answer.groups.map((group, i) => {
      const section = document.createElement("section");
      section.className = "group";
      const title = document.createElement("h2");
      title.textContent = `Group ${offset + i + 1}: ${group.items.length} images, best score ${group.score.toFixed(3)}`;
      const grid = document.createElement("div");
      grid.className = "grid";
      grid.append(...group.items.map(card));
      section.append(title, grid);
      return section;
    });
    $("groups").replaceChildren(...groups);
    $("dup-page").textContent = `page ${page} of ${pages}`;
    pager("dup-prev", page > 1, page - 1);
    pager("dup-next", page < pages, page + 1);
    showError("");
    setState("ready");
  } catch (e) {
    $("groups").replaceChildren();
    $("dup-summary").textContent = "";
    showError(e.message);
  }
}

function pager(id, enabled, page) {
  const link = $(id);
  link.setAttribute("aria-disabled", String(!enabled));
  link.href = `?view=duplicates&page=${page}`;
}

// ---- the page ----------------------------------------------------------------
function showView(view) {
  $("search-view").hidden = view !== "search";
  $("duplicates-view").hidden = view !== "duplicates";
  $("tab-search").classList.toggle("current", view === "search");
  $("tab-duplicates").classList.toggle("current", view === "duplicates");
}

function fillFilters() {
  const options = (select, tokens) => {
    for (const token of tokens) {
      const option = document.createElement("option");
      option.value = token.name;
      option.textContent = `${token.name} (${token.count})`;
      select.append(option);
    }
  };
  options($("class"), index.classes);
  options($("span"), index.spans);
  $("span-filter").hidden = index.spans.length < 2;
}

function render() {
  const query = params();
  const view = query.get("view") === "duplicates" ? "duplicates" : "search";
  showView(view);
  const {k, threshold, className, span} = knobs();
  $("k").value = k;
  $("threshold").value = threshold || "";
  $("class").value = className;
  $("span").value = span;
  if (view === "duplicates") reviewDuplicates();
  else search();
}

function onKnob(name, value) {
  const query = params();
  if (value === "" || value === null) query.delete(name);
  else query.set(name, value);
  history.replaceState(null, "", `?${query}`);
  search();
}

function wire() {
  $("file").addEventListener("change", (e) => readImage(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    readImage(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const item = [...e.clipboardData.items].find((i) => i.type.startsWith("image/"));
    if (item) readImage(item.getAsFile());
  });
  $("k").addEventListener("change", (e) => onKnob("k", e.target.value));
  $("threshold").addEventListener("change", (e) => onKnob("threshold", e.target.value));
  $("class").addEventListener("change", (e) => onKnob("class", e.target.value));
  $("span").addEventListener("change", (e) => onKnob("span", e.target.value));
  $("controls").addEventListener("submit", (e) => e.preventDefault());
  window.addEventListener("popstate", render);
}

async function start() {
  wire();
  try {
    index = await call(ROUTES.searchIndex());
  } catch (e) {
    $("model").textContent = "";
    showError(`No search index to search: ${e.message}`);
    return;
  }
  $("model").textContent =
    `version ${index.model_version}: ${index.count} images, ${index.kind} search` +
    (index.thumbnails ? "" : " (no thumbnails: ids only)");
  if (!index.count) {
    showError(`The search index of version ${index.model_version} is empty: push a corpus first.`);
    return;
  }
  fillFilters();
  render();
}

start();
