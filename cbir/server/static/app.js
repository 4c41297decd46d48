// The cbir page: browse an index, or give an image and see its nearest neighbours; click one for more like it.
// What is shown lives in the address (index, query id, examples, filters, page), so Back works and a search
// can be bookmarked or shared; an uploaded image cannot travel in an address, so it is kept in memory.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_PER_PAGE = 1000; // the API's limit on k (and a listing's limit)
const MAX_DEPTH = 10000; // how deep the API pages a search
const DEFAULT_K = 12;
const state = {
  indexes: [],
  build: "cbir index FOLDER --name NAME",
  view: null, // what is shown: see viewFromLocation
  uploads: new Map(), // upload number -> File (this tab's history entries point at them)
  uploadCount: 0,
  known: new Map(), // "index/id" -> {name, thumbnailUrl}: for chips and captions
  busy: 0,
  previewUrl: null,
  facetsOf: null,
  poll: null,
  needsToken: false,
};

// -- the address --------------------------------------------------------------------
function ids(text) {
  return (text || "").split(",").filter((t) => /^[0-9]{1,18}$/.test(t)).map(Number);
}

function positive(text, fallback) {
  const n = parseInt(text, 10);
  return Number.isFinite(n) && n >= 1 ? n : fallback;
}

// Filters on what photos say about themselves, beside folder and label: the API's parameter names and the inputs' ids.
const META_FILTERS = ["camera", "taken_after", "taken_before"];
const isFiltered = (view) => Boolean(view.under || view.label || META_FILTERS.some((f) => view[f]));

function viewFromLocation() {
  const p = new URLSearchParams(window.location.search);
  const q = ids(p.get("q"))[0];
  const upload = history.state && history.state.upload;
  return {
    index: p.get("index") || "",
    q: q === undefined ? null : q,
    upload: q === undefined && state.uploads.has(upload) ? upload : null,
    more: ids(p.get("more")),
    less: ids(p.get("less")),
    k: positive(p.get("k"), DEFAULT_K), // over the API's limit: its error is shown, nothing is cut silently
    under: p.get("under") || "",
    label: p.get("label") || "",
    ...Object.fromEntries(META_FILTERS.map((f) => [f, p.get(f) || ""])),
    page: positive(p.get("page"), 1),
  };
}

function addressOf(view) {
  const p = new URLSearchParams();
  if (view.index) p.set("index", view.index);
  if (view.q !== null) p.set("q", String(view.q));
  if (view.more.length) p.set("more", view.more.join(","));
  if (view.less.length) p.set("less", view.less.join(","));
  if (view.k !== DEFAULT_K) p.set("k", String(view.k));
  if (view.under) p.set("under", view.under);
  if (view.label) p.set("label", view.label);
  for (const f of META_FILTERS) if (view[f]) p.set(f, view[f]);
  if (view.page > 1) p.set("page", String(view.page));
  const query = p.toString();
  return query ? `/?${query}` : "/";
}

// Show `changes` applied to what is shown now, as a new history entry (Back returns to this one).
function go(changes, { replace = false } = {}) {
  const view = { ...state.view, ...changes };
  const typed = Number($("k").value); // typed but not yet "changed" (no Enter, no blur): it counts too
  if (!("k" in changes) && Number.isInteger(typed) && typed >= 1 && typed <= MAX_PER_PAGE) view.k = typed;
  // A new search, filter or page size starts at its first page.
  if (!("page" in changes) || view.k !== state.view.k) view.page = 1;
  // Nothing new (a "change" of k to what it was): no history entry, and tiles and chips stay as they are.
  if (addressOf(view) === addressOf(state.view) && view.upload === state.view.upload) return;
  state.view = view;
  history[replace ? "replaceState" : "pushState"]({ upload: view.upload }, "", addressOf(view));
  return show();
}

// -- small helpers -------------------------------------------------------------------------
function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function baseName(path) {
  return path.split(/[\\/]/).pop();
}

function formatSize(bytes) {
  if (bytes == null) return "";
  return bytes < 1e6 ? `${(bytes / 1e3).toFixed(1)} kB` : `${(bytes / 1e6).toFixed(1)} MB`;
}

function api(index) {
  return `/api/indexes/${encodeURIComponent(index)}`;
}

function remember(index, id, name, thumbnailUrl) {
  state.known.set(`${index}/${id}`, { name, thumbnailUrl });
}

function knownImage(index, id) {
  return state.known.get(`${index}/${id}`) || { name: `image ${id}`, thumbnailUrl: `${api(index)}/thumbnails/${id}` };
}

// -- indexes, facets, the empty state ----------------------------------------------------------
async function loadIndexes() {
  let body;
  try {
    const response = await fetch("/api/indexes");
    if (response.status === 401) return askForToken();
    body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
  } catch (error) {
    setStatus(`Cannot list the indexes: ${error.message}`, true);
    return false;
  }
  const names = (list) => list.map((i) => `${i.name}:${i.size}`).join(" ");
  const changed = names(body.indexes) !== names(state.indexes);
  state.indexes = body.indexes;
  state.build = body.build || state.build;
  if (changed) {
    $("index").replaceChildren(...state.indexes.map((index) => new Option(`${index.name} (${index.size} images)`, index.name)));
  }
  return changed;
}

// No index yet: say how to make one, and look again every few seconds (the server picks new ones up).
function showEmptyState() {
  $("empty").hidden = false;
  $("controls").hidden = true; // nothing to choose yet
  $("build-command").textContent = state.build;
  $("query-area").hidden = true;
  $("results").replaceChildren();
  $("pager").hidden = true;
  setStatus("");
  if (state.poll === null) {
    state.poll = setInterval(async () => {
      if ((await loadIndexes()) && state.indexes.length) {
        clearInterval(state.poll);
        state.poll = null;
        go({ index: state.indexes[0].name }, { replace: true });
      }
    }, 2000);
  }
}

// The folders and labels a search or listing can be kept to, for the index shown.
async function loadFacets(index) {
  if (state.facetsOf === index) return;
  state.facetsOf = index;
  const under = $("under");
  const label = $("label");
  const camera = $("camera");
  under.replaceChildren(new Option("All folders", ""));
  label.replaceChildren(new Option("All labels", ""));
  camera.replaceChildren(new Option("All cameras", ""));
  try {
    const response = await fetch(`${api(index)}/facets`);
    if (!response.ok) return;
    const body = await response.json();
    if (index !== state.view.index) return;
    // Each folder and every folder above it: "photos/2019" as well as "photos/2019/beach".
    const folders = new Set();
    for (const folder of body.folders) {
      const parts = folder.split("/");
      for (let n = 1; n <= parts.length; n++) folders.add(parts.slice(0, n).join("/"));
    }
    under.append(...[...folders].sort().map((f) => new Option(f, f)));
    label.append(...body.labels.map((l) => new Option(`${l.label} (${l.count})`, l.label)));
    camera.append(...(body.cameras || []).map((c) => new Option(`${c.camera} (${c.count})`, c.camera)));
    // The date pickers open on the collection's own span.
    for (const id of ["taken_after", "taken_before"]) {
      $(id).min = body.taken && body.taken.first ? body.taken.first.slice(0, 10) : "";
      $(id).max = body.taken && body.taken.last ? body.taken.last.slice(0, 10) : "";
    }
  } catch {
    // The filters stay at "all": searching still works.
  }
  showControls(state.view);
}

// A select shows the address's value even before (or without) the facets that list it.
function choose(select, value) {
  if (value && ![...select.options].some((o) => o.value === value)) select.append(new Option(value, value));
  select.value = value;
}

function showControls(view) {
  $("index").value = view.index;
  choose($("under"), view.under);
  choose($("label"), view.label);
  choose($("camera"), view.camera);
  $("taken_after").value = view.taken_after;
  $("taken_before").value = view.taken_before;
  $("k").value = String(view.k);
  const index = state.indexes.find((i) => i.name === view.index);
  const info = $("index-info");
  // The summary, not the extractor's every parameter: short, and never a server path.
  info.textContent = index ? `${index.summary || index.extractor}, ${index.dim}-d, ${index.index_type || "flat"}` : "";
  info.title = index ? index.extractor : "";
}

// A server others can reach needs its token: asked once, then kept by the browser as a cookie
// (the server sets it on /?token=..., so thumbnails and originals carry it too).
function askForToken() {
  const form = $("token-form");
  form.hidden = false;
  state.needsToken = true;
  setStatus("This server needs its token: the one cbir serve printed (after ?token= in its address).", true);
  $("token").focus();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (token) window.location.assign(`/?token=${encodeURIComponent(token)}`);
  });
  return false;
}

// -- showing a view ------------------------------------------------------------------------------
async function show() {
  const view = state.view;
  if (state.needsToken) return;
  showControls(view);
  if (!state.indexes.length) return showEmptyState();
  $("empty").hidden = true;
  $("controls").hidden = false;
  $("query-area").hidden = false;
  if (!state.indexes.some((i) => i.name === view.index)) {
    clearResults();
    return setStatus(`No index named ${view.index} is served here; choose one above.`, true);
  }
  loadFacets(view.index);
  showExamples(view);
  if (view.q !== null) return search(view, queryById(view), knownImage(view.index, view.q).name);
  if (view.upload !== null) return search(view, queryByUpload(view), state.uploads.get(view.upload).name || "pasted image");
  return browse(view);
}

function clearResults() {
  $("results").replaceChildren();
  $("pager").hidden = true;
  hideQuery();
}

function hideQuery() {
  $("query").hidden = true;
  $("query-image").removeAttribute("src");
}

function showQuery(src, caption) {
  $("query-image").src = src;
  $("query-image").alt = `Query: ${caption}`;
  $("query-caption").textContent = caption;
  $("query").hidden = false;
}

function queryById(view) {
  const image = knownImage(view.index, view.q);
  showQuery(image.thumbnailUrl, image.name);
  const examples = view.more.length + view.less.length > 0;
  const body = examples ? { positive: [view.q, ...view.more], negative: view.less } : { id: view.q };
  return { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
}

function queryByUpload(view) {
  const file = state.uploads.get(view.upload);
  const name = file.name || "pasted image";
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(file);
  showQuery(state.previewUrl, name);
  const form = new FormData();
  form.append("file", file, name);
  for (const id of view.more) form.append("positive", String(id));
  for (const id of view.less) form.append("negative", String(id));
  return { method: "POST", body: form };
}

function pageQuery(view, size) {
  const params = new URLSearchParams({ offset: String((view.page - 1) * view.k), [size]: String(view.k) });
  if (view.under) params.set("under", view.under);
  if (view.label) params.set("label", view.label);
  for (const f of META_FILTERS) if (view[f]) params.set(f, view[f]);
  return params.toString();
}

// One request at a time on screen: an answer to an older one is dropped; a failed one leaves nothing stale.
async function fetchShown(url, request, what) {
  const token = ++state.busy;
  setStatus(`${what}…`);
  document.body.setAttribute("aria-busy", "true");
  try {
    const response = await fetch(url, request);
    let body;
    try {
      body = await response.json();
    } catch {
      throw new Error(`${response.status} ${response.statusText}`);
    }
    if (!response.ok) throw new Error(body.error || response.statusText);
    return token === state.busy ? body : null;
  } catch (error) {
    if (token === state.busy) {
      clearResults(); // not the previous results under the error, nor a preview of what failed
      setStatus(`${what} failed: ${error.message}`, true);
    }
    return null;
  } finally {
    if (token === state.busy) document.body.removeAttribute("aria-busy");
  }
}

async function search(view, request, label) {
  const examples = view.more.length || view.less.length ? ` + ${view.more.length} more, ${view.less.length} less` : "";
  const body = await fetchShown(`${api(view.index)}/search?${pageQuery(view, "k")}`, request, `Searching ${view.index} for ${label}${examples}`);
  if (!body) return;
  if (view.q !== null && body.query) {
    remember(view.index, view.q, baseName(body.query), knownImage(view.index, view.q).thumbnailUrl);
    $("query-caption").textContent = baseName(body.query);
  }
  showResults(body, "search");
  const reachable = Math.min(body.matching, MAX_DEPTH);
  const filtered = isFiltered(view) ? "match the filter" : "in the index";
  const few = body.matching < view.k * view.page && view.page === 1 ? ` (only ${body.matching} ${filtered})` : "";
  setStatus(`${rangeText(body.offset, body.results.length, reachable)} for ${label}${examples}${few}.`);
  showPager(view, reachable);
}

// A video's frame: "01:23" (or "1:02:03") for its time in seconds.
function formatTime(seconds) {
  const whole = Math.max(0, Math.floor(seconds));
  const [h, m, s] = [Math.floor(whole / 3600), Math.floor(whole / 60) % 60, whole % 60];
  const two = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${two(m)}:${two(s)}` : `${two(m)}:${two(s)}`;
}

// A video's frame plays in its tile from the frame's time (the server answers Range requests, so it seeks).
function playFrom(item, result) {
  const video = Object.assign(document.createElement("video"), { controls: true, autoplay: true, muted: true, playsInline: true });
  video.className = "player";
  video.src = `${result.image_url}#t=${result.time}`;
  video.setAttribute("aria-label", `${baseName(result.path)} from ${formatTime(result.time)}`);
  item.querySelector(".more").replaceWith(video);
}

async function browse(view) {
  hideQuery();
  const where = [view.under && `in ${view.under}`, view.label && `labelled ${view.label}`, view.camera && `from ${view.camera}`,
    view.taken_after && `taken from ${view.taken_after}`, view.taken_before && `taken to ${view.taken_before}`].filter(Boolean).join(", ");
  const body = await fetchShown(`${api(view.index)}/images?${pageQuery(view, "limit")}`, {}, `Listing ${view.index}${where ? ` ${where}` : ""}`);
  if (!body) return;
  showResults(body, "browse");
  setStatus(body.total ? `${rangeText(body.offset, body.results.length, body.total)} in ${view.index}${where ? `, ${where}` : ""}, by folder. Give an image, or click one, to search.` : `No image ${where || "in this index"}.`);
  showPager(view, body.total);
}

function rangeText(offset, count, total) {
  if (!count) return `Nothing on page ${state.view.page} (${total} in all)`;
  return `${offset + 1}–${offset + count} of ${total}`;
}

function showPager(view, total) {
  const pages = Math.max(1, Math.ceil(total / view.k));
  $("pager").hidden = pages <= 1 && view.page === 1;
  $("page-info").textContent = `Page ${view.page} of ${pages}`;
  $("previous").disabled = view.page <= 1;
  $("next").disabled = view.page >= pages;
}

function showResults(body, mode) {
  const template = $("result-template");
  const index = body.index; // tiles belong to the index that answered, whatever is chosen later
  const items = body.results.map((result) => {
    const item = template.content.firstElementChild.cloneNode(true);
    const isFrame = typeof result.time === "number";
    const name = isFrame ? `${baseName(result.path)} @ ${formatTime(result.time)}` : baseName(result.path);
    remember(index, result.id, name, result.thumbnail_url);
    item.dataset.id = result.id;
    item.dataset.index = index;
    const button = item.querySelector(".more");
    const score = mode === "search" ? `, score ${result.score.toFixed(3)}` : "";
    button.setAttribute("aria-label", `${mode === "search" ? "Rank" : "Number"} ${result.rank}, ${name}${score}: search for more like this`);
    button.addEventListener("click", () => go({ index, q: result.id, upload: null, more: [], less: [] }));
    const img = item.querySelector("img");
    img.src = result.thumbnail_url;
    img.alt = name;
    item.querySelector(".rank").textContent = `#${result.rank}`;
    item.querySelector(".score").textContent = mode === "search" ? result.score.toFixed(3) : "";
    const label = item.querySelector(".name");
    label.textContent = name;
    label.title = result.path;
    const date = (result.taken || result.mtime || "").slice(0, 10);
    // The folder's own name on the tile (a whole path does not fit); all of it on hover.
    const details = [result.label, baseName(result.folder || ""), formatSize(result.size), date, result.camera].filter(Boolean);
    item.querySelector(".details").textContent = details.join(" · ");
    item.querySelector(".details").title = [result.label, result.folder, formatSize(result.size), date, result.camera].filter(Boolean).join("\n");
    for (const [selector, which, words] of [[".like", "more", "More"], [".unlike", "less", "Less"]]) {
      const action = item.querySelector(selector);
      if (mode === "browse") action.remove(); // nothing to refine yet
      else {
        action.addEventListener("click", () => refine(which, result.id));
        action.setAttribute("aria-label", `${words} like ${name}`);
      }
    }
    const link = item.querySelector(".open");
    if (result.exists === false) {
      // Indexed, but the file is gone since: say so instead of a broken link.
      item.classList.add("missing");
      link.replaceWith(Object.assign(document.createElement("span"), { className: "gone", textContent: "file missing" }));
    } else {
      link.href = result.image_url;
      link.setAttribute("aria-label", `Open the original of ${name}`);
      if (isFrame) {
        link.href = `${result.image_url}#t=${result.time}`;
        link.textContent = `Play from ${formatTime(result.time)}`;
        link.setAttribute("aria-label", `Play ${name}`);
        link.addEventListener("click", (event) => {
          event.preventDefault();
          if (!item.querySelector("video")) playFrom(item, result);
        });
      }
    }
    return item;
  });
  $("results").replaceChildren(...items);
}

// "More like this" / "less like this": the query and every example so far, searched as one.
function refine(which, id) {
  const view = state.view;
  const more = view.more.filter((e) => e !== id);
  const less = view.less.filter((e) => e !== id);
  (which === "more" ? more : less).push(id);
  return go({ more, less });
}

function showExamples(view) {
  const chips = (list, which) =>
    list.map((id) => {
      const example = knownImage(view.index, id);
      const chip = document.createElement("li");
      chip.className = `chip ${which}`;
      const img = Object.assign(document.createElement("img"), { src: example.thumbnailUrl, alt: "" });
      const remove = Object.assign(document.createElement("button"), { type: "button", textContent: "×", title: `Remove ${example.name}` });
      remove.setAttribute("aria-label", `Remove ${example.name} from ${which === "more" ? "more like" : "less like"}`);
      remove.addEventListener("click", () => go({ [which]: state.view[which].filter((e) => e !== id) }));
      chip.append(img, Object.assign(document.createElement("span"), { textContent: example.name }), remove);
      return chip;
    });
  $("more-list").replaceChildren(...chips(view.more, "more"));
  $("less-list").replaceChildren(...chips(view.less, "less"));
  $("more-list").parentElement.hidden = view.more.length === 0;
  $("less-list").parentElement.hidden = view.less.length === 0;
  $("refine").hidden = view.more.length + view.less.length === 0;
}

// -- giving an image -------------------------------------------------------------------------------
function searchFile(file) {
  if (!file || !state.indexes.length) return;
  const number = ++state.uploadCount;
  state.uploads.set(number, file);
  return go({ q: null, upload: number, more: [], less: [] });
}

function firstImage(files) {
  return [...files].find((f) => f.type.startsWith("image/")) || files[0];
}

function setUp() {
  $("controls").addEventListener("submit", (event) => event.preventDefault());
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    event.target.value = ""; // so choosing the same file again is a change too
    searchFile(file);
  });
  // Ids belong to one index: another index starts from its listing (an uploaded image is searched there too).
  $("index").addEventListener("change", () => {
    clearResults();
    go({ index: $("index").value, q: null, more: [], less: [], under: "", label: "", camera: "", taken_after: "", taken_before: "" });
  });
  $("k").addEventListener("change", () => {
    const k = Number($("k").value);
    if (!Number.isInteger(k) || k < 1 || k > MAX_PER_PAGE) {
      return setStatus(`Results per page: a whole number from 1 to ${MAX_PER_PAGE} (the pages below go further).`, true);
    }
    go({ k });
  });
  $("under").addEventListener("change", () => go({ under: $("under").value }));
  $("label").addEventListener("change", () => go({ label: $("label").value }));
  for (const f of META_FILTERS) $(f).addEventListener("change", () => go({ [f]: $(f).value }));
  // The pager sits below the grid: the new page is read from its top.
  const turn = (by) => {
    go({ page: state.view.page + by });
    $("status").scrollIntoView({ block: "nearest" });
  };
  $("previous").addEventListener("click", () => turn(-1));
  $("next").addEventListener("click", () => turn(1));
  $("clear").addEventListener("click", () => go({ q: null, upload: null, more: [], less: [] }));
  // Anywhere on the page: a file dropped outside the box must not make the browser open it (the page is lost).
  const drop = $("drop");
  window.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  window.addEventListener("dragleave", (event) => {
    if (event.relatedTarget === null) drop.classList.remove("over");
  });
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer && event.dataTransfer.files.length) searchFile(firstImage(event.dataTransfer.files));
  });
  document.addEventListener("paste", (event) => {
    const item = [...event.clipboardData.items].find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (item) searchFile(item.getAsFile());
  });
  document.addEventListener("visibilitychange", () => document.visibilityState === "visible" && refreshIndexes());
  $("index").addEventListener("focus", refreshIndexes);
  window.addEventListener("popstate", () => {
    state.view = viewFromLocation();
    show();
  });
  start();
}

// Indexes built or deleted while the page is open: looked for when the page is shown again or the list opened.
async function refreshIndexes() {
  if (state.indexes.length && (await loadIndexes())) {
    if (!state.indexes.some((i) => i.name === state.view.index)) go({ index: state.indexes[0]?.name || "" }, { replace: true });
    else showControls(state.view);
  }
}

async function start() {
  await loadIndexes();
  const view = viewFromLocation();
  if (!view.index && state.indexes.length) view.index = state.indexes[0].name;
  state.view = view;
  history.replaceState({ upload: view.upload }, "", addressOf(view));
  show();
}

setUp();
