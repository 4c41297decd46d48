// The cbir search page: pick an index, give an image, see its nearest neighbours, click one for more like it.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { indexes: [], last: null, previewUrl: null, busy: 0, more: [], less: [] };

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function wantedK() {
  const k = parseInt($("k").value, 10);
  return Number.isFinite(k) && k >= 1 ? Math.min(k, 1000) : 12;
}

function indexName() {
  return $("index").value;
}

async function loadIndexes() {
  try {
    const response = await fetch("/api/indexes");
    if (response.status === 401) {
      askForToken();
      return;
    }
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    state.indexes = body.indexes;
  } catch (error) {
    setStatus(`Cannot list the indexes: ${error.message}`, true);
    return;
  }
  const select = $("index");
  select.replaceChildren(...state.indexes.map((index) => new Option(`${index.name} (${index.size} images)`, index.name)));
  if (state.indexes.length === 0) setStatus("No index is served. Build one with: cbir index FOLDER --name NAME", true);
  describeIndex();
  loadFacets();
}

// The folders and labels a search can be kept to, for the index chosen.
async function loadFacets() {
  const name = indexName();
  const under = $("under");
  const label = $("label");
  under.replaceChildren(new Option("All folders", ""));
  label.replaceChildren(new Option("All labels", ""));
  if (!name) return;
  try {
    const response = await fetch(`/api/indexes/${encodeURIComponent(name)}/facets`);
    if (!response.ok) return;
    const body = await response.json();
    if (name !== indexName()) return;
    // Each folder and every folder above it: "photos/2019" as well as "photos/2019/beach".
    const folders = new Set();
    for (const folder of body.folders) {
      const parts = folder.split("/");
      for (let n = 1; n <= parts.length; n++) folders.add(parts.slice(0, n).join("/"));
    }
    under.append(...[...folders].sort().map((f) => new Option(f, f)));
    label.append(...body.labels.map((l) => new Option(`${l.label} (${l.count})`, l.label)));
  } catch {
    // The filters stay at "all": searching still works.
  }
}

function filterQuery() {
  const params = new URLSearchParams({ k: String(wantedK()) });
  if ($("under").value) params.set("under", $("under").value);
  if ($("label").value) params.set("label", $("label").value);
  if ($("explain").checked) params.set("explain", "true");
  return params.toString();
}

function formatSize(bytes) {
  if (bytes == null) return "";
  return bytes < 1e6 ? `${(bytes / 1e3).toFixed(1)} kB` : `${(bytes / 1e6).toFixed(1)} MB`;
}

// A server others can reach needs its token: asked once, then kept by the browser as a cookie
// (the server sets it on /?token=..., so thumbnails and originals carry it too).
function askForToken() {
  const form = $("token-form");
  form.hidden = false;
  setStatus("This server needs its token: the one cbir serve printed (after ?token= in its address).", true);
  $("token").focus();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (token) window.location.assign(`/?token=${encodeURIComponent(token)}`);
  });
}

function describeIndex() {
  const index = state.indexes.find((i) => i.name === indexName());
  $("index-info").textContent = index ? `${index.extractor}, ${index.dim}-d, ${index.index_type || "flat"}` : "";
}

function showQuery(src, caption) {
  const figure = $("query");
  $("query-image").src = src;
  $("query-image").alt = `Query: ${caption}`;
  $("query-caption").textContent = caption;
  figure.hidden = false;
}

async function search(request, label) {
  const token = ++state.busy;
  setStatus(`Searching ${indexName()} for ${label}…`);
  document.body.setAttribute("aria-busy", "true");
  try {
    const response = await fetch(`/api/indexes/${encodeURIComponent(indexName())}/search?${filterQuery()}`, request);
    let body;
    try {
      body = await response.json();
    } catch {
      throw new Error(`${response.status} ${response.statusText}`);
    }
    if (token !== state.busy) return; // a newer search has started
    if (!response.ok) throw new Error(body.error || response.statusText);
    showResults(body);
    const filtered = $("under").value || $("label").value;
    const note = body.k < wantedK() ? ` (only ${body.k} ${filtered ? "match the filter" : "in the index"})` : "";
    setStatus(`${body.results.length} results for ${label}${note}.`);
  } catch (error) {
    if (token === state.busy) setStatus(`Search failed: ${error.message}`, true);
  } finally {
    if (token === state.busy) document.body.removeAttribute("aria-busy");
  }
}

function baseName(path) {
  return path.split(/[\\/]/).pop();
}

function showResults(body) {
  const template = $("result-template");
  const items = body.results.map((result) => {
    const item = template.content.firstElementChild.cloneNode(true);
    const name = baseName(result.path);
    item.dataset.id = result.id;
    const button = item.querySelector(".more");
    button.setAttribute("aria-label", `Rank ${result.rank}, ${name}, score ${result.score.toFixed(3)}: search for more like this`);
    button.addEventListener("click", () => searchById(result.id, name, result.thumbnail_url));
    const img = item.querySelector("img");
    img.src = result.thumbnail_url;
    img.alt = name;
    item.querySelector(".rank").textContent = `#${result.rank}`;
    item.querySelector(".score").textContent = result.score.toFixed(3);
    const label = item.querySelector(".name");
    label.textContent = name;
    label.title = result.path;
    const date = (result.taken || result.mtime || "").slice(0, 10);
    if (result.region) frameRegion(button, img, result.region.box);
    const verified = result.verified ? `verified (${result.inliers} inliers)` : "";
    const details = [verified, result.label, result.folder, formatSize(result.size), date, result.camera].filter(Boolean);
    item.querySelector(".details").textContent = details.join(" · ");
    item.querySelector(".details").title = details.join("\n");
    const example = { id: result.id, name, thumbnailUrl: result.thumbnail_url };
    item.querySelector(".like").addEventListener("click", () => refine("more", example));
    item.querySelector(".unlike").addEventListener("click", () => refine("less", example));
    item.querySelector(".like").setAttribute("aria-label", `More like ${name}`);
    item.querySelector(".unlike").setAttribute("aria-label", `Less like ${name}`);
    const link = item.querySelector(".open");
    if (result.exists === false) {
      // Indexed, but the file is gone since: say so instead of a broken link.
      item.classList.add("missing");
      link.replaceWith(Object.assign(document.createElement("span"), { className: "gone", textContent: "file missing" }));
    } else {
      link.href = result.image_url;
      link.setAttribute("aria-label", `Open the original of ${name}`);
    }
    return item;
  });
  $("results").replaceChildren(...items);
}

// ?explain: the region [x0, y0, x1, y1] (fractions of the image) framed on the square, cover-fitted thumbnail.
function frameRegion(button, img, box) {
  const frame = Object.assign(document.createElement("span"), { className: "region" });
  const place = () => {
    const w = img.naturalWidth, h = img.naturalHeight, side = Math.min(w, h);
    const fx = (v) => ((v * w - (w - side) / 2) / side) * 100, fy = (v) => ((v * h - (h - side) / 2) / side) * 100;
    const [x0, y0, x1, y1] = [fx(box[0]), fy(box[1]), fx(box[2]), fy(box[3])].map((v) => Math.min(100, Math.max(0, v)));
    Object.assign(frame.style, { left: `${x0}%`, top: `${y0}%`, width: `${x1 - x0}%`, height: `${y1 - y0}%` });
  };
  img.complete && img.naturalWidth ? place() : img.addEventListener("load", place, { once: true });
  button.append(frame);
}

// "More like this" / "less like this": the query and every example so far, searched as one.
function refine(which, example) {
  if (!state.last) return;
  for (const list of [state.more, state.less]) {
    const at = list.findIndex((e) => e.id === example.id);
    if (at >= 0) list.splice(at, 1);
  }
  (which === "more" ? state.more : state.less).push(example);
  showExamples();
  return searchExamples();
}

function showExamples() {
  const chips = (list, which) =>
    list.map((example) => {
      const chip = document.createElement("li");
      chip.className = `chip ${which}`;
      const img = Object.assign(document.createElement("img"), { src: example.thumbnailUrl, alt: "" });
      const remove = Object.assign(document.createElement("button"), { type: "button", textContent: "×", title: `Remove ${example.name}` });
      remove.setAttribute("aria-label", `Remove ${example.name} from ${which === "more" ? "more like" : "less like"}`);
      remove.addEventListener("click", () => {
        list.splice(list.indexOf(example), 1);
        showExamples();
        searchExamples();
      });
      chip.append(img, Object.assign(document.createElement("span"), { textContent: example.name }), remove);
      return chip;
    });
  $("more-list").replaceChildren(...chips(state.more, "more"));
  $("less-list").replaceChildren(...chips(state.less, "less"));
  $("refine").hidden = state.more.length + state.less.length === 0;
}

function resetExamples() {
  state.more = [];
  state.less = [];
  showExamples();
}

function searchExamples() {
  const last = state.last;
  if (!last) return;
  if (state.more.length + state.less.length === 0) return repeatLast();
  const label = `${last.name} + ${state.more.length} more, ${state.less.length} less`;
  if (last.kind === "file") {
    const form = new FormData();
    form.append("file", last.file, last.name);
    for (const e of state.more) form.append("positive", String(e.id));
    for (const e of state.less) form.append("negative", String(e.id));
    return search({ method: "POST", body: form }, label);
  }
  const body = { positive: [last.id, ...state.more.map((e) => e.id)], negative: state.less.map((e) => e.id) };
  return search({ method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }, label);
}

function searchFile(file) {
  if (!file) return;
  resetExamples();
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(file);
  const name = file.name || "pasted image";
  showQuery(state.previewUrl, name);
  state.last = { kind: "file", file, name };
  const form = new FormData();
  form.append("file", file, name);
  return search({ method: "POST", body: form }, name);
}

function searchById(id, name, thumbnailUrl) {
  resetExamples();
  showQuery(thumbnailUrl, name);
  state.last = { kind: "id", id, name, thumbnailUrl, index: indexName() };
  return search(
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ id }) },
    name,
  );
}

function repeatLast() {
  const last = state.last;
  if (!last) return;
  if (last.kind === "file") searchFile(last.file);
  else if (last.index === indexName()) searchById(last.id, last.name, last.thumbnailUrl);
  else setStatus("Ids belong to one index: give an image to search this one.");
}

function setUp() {
  $("controls").addEventListener("submit", (event) => event.preventDefault());
  $("file").addEventListener("change", (event) => searchFile(event.target.files[0]));
  $("index").addEventListener("change", () => {
    describeIndex();
    resetExamples(); // ids belong to one index
    loadFacets();
    repeatLast();
  });
  $("k").addEventListener("change", searchExamples);
  $("under").addEventListener("change", searchExamples);
  $("label").addEventListener("change", searchExamples);
  $("explain").addEventListener("change", searchExamples);
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = [...event.dataTransfer.files].find((f) => f.type.startsWith("image/")) || event.dataTransfer.files[0];
    searchFile(file);
  });
  document.addEventListener("paste", (event) => {
    const item = [...event.clipboardData.items].find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (item) searchFile(item.getAsFile());
  });
  loadIndexes();
}

setUp();
