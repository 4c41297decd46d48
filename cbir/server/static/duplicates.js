"use strict";
// The duplicate review: groups side by side, a suggested keeper each, a person's choices, exports.
// What is kept and what the exports say come from the server (the library's keeper rule and
// formats, as the CLI's); this page only shows them and sends the choices back.

const $ = (id) => document.getElementById(id);
const state = { index: "", groups: [], keep: new Map(), exportRun: 0 };

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function api(path, options) {
  const response = await fetch(path, options);
  if (response.status === 401) throw new Error("this server needs its token: open the search page with ?token=TOKEN once, then come back");
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function fromUrl() {
  const params = new URLSearchParams(window.location.search);
  return { index: params.get("index") || "", threshold: params.get("threshold") || "", exact: params.get("exact") === "1" };
}

function toUrl() {
  const params = new URLSearchParams();
  if (state.index) params.set("index", state.index);
  if ($("threshold").value.trim()) params.set("threshold", $("threshold").value.trim());
  if ($("exact").checked) params.set("exact", "1");
  const url = `/duplicates${params.toString() ? "?" + params : ""}`;
  if (url !== window.location.pathname + window.location.search) history.pushState(null, "", url);
}

async function start() {
  const asked = fromUrl();
  $("threshold").value = asked.threshold;
  $("exact").checked = asked.exact;
  try {
    const { indexes } = await (await api("/api/indexes")).json();
    if (!indexes.length) { setStatus("No index is served yet: make one with cbir index PHOTOS/ --name NAME."); return; }
    const select = $("index");
    select.replaceChildren(...indexes.map((d) => new Option(`${d.name} (${d.images} images)`, d.name)));
    select.value = indexes.some((d) => d.name === asked.index) ? asked.index : indexes[0].name;
  } catch (error) { setStatus(`Cannot list the indexes: ${error.message}`, true); return; }
  $("controls").addEventListener("submit", (event) => { event.preventDefault(); toUrl(); find(); });
  $("index").addEventListener("change", () => { toUrl(); find(); });
  $("exact").addEventListener("change", () => { toUrl(); find(); });
  document.querySelectorAll(".exports button").forEach((b) => b.addEventListener("click", () => download(b.dataset.format)));
  window.addEventListener("popstate", () => {
    const back = fromUrl();
    $("threshold").value = back.threshold;
    $("exact").checked = back.exact;
    if (back.index) $("index").value = back.index;
    find();
  });
  find();
}

async function find() {
  state.index = $("index").value;
  const params = new URLSearchParams();
  const threshold = $("threshold").value.trim();
  if (threshold) params.set("threshold", threshold);
  if ($("exact").checked) params.set("exact", "true");
  setStatus("Comparing images…");
  document.body.setAttribute("aria-busy", "true");
  const asked = ++state.exportRun;
  try {
    const found = await (await api(`/api/indexes/${encodeURIComponent(state.index)}/duplicates?${params}`)).json();
    if (asked !== state.exportRun) return; // a newer search has started
    state.groups = [...found.exact, ...found.near];
    state.keep = new Map(state.groups.map((g) => [g.group, g.keep_id]));
    if (!threshold && found.threshold !== null) $("threshold").placeholder = `default ${found.threshold}`;
    render(found);
    await refreshExport();
  } catch (error) {
    if (asked !== state.exportRun) return;
    state.groups = [];
    $("groups").replaceChildren();
    $("review").hidden = $("not-kept-panel").hidden = true;
    setStatus(`Finding duplicates failed: ${error.message}`, true);
  } finally {
    document.body.removeAttribute("aria-busy");
  }
}

function render(found) {
  const near = found.threshold === null ? "exact copies only" : `near-duplicates at similarity ≥ ${found.threshold} (${found.threshold_source})`;
  setStatus(state.groups.length ? "" : `No duplicates in ${state.index}: no exact copies, no ${near}.`);
  $("summary").textContent = `${found.exact.length} group(s) of exact copies, ${found.near.length} group(s) of ${near}.`;
  $("review").hidden = $("not-kept-panel").hidden = !state.groups.length;
  $("groups").replaceChildren(...state.groups.map(groupElement));
}

function groupElement(group) {
  const section = $("group-template").content.firstElementChild.cloneNode(true);
  section.dataset.group = group.group;
  section.dataset.tier = group.tier;
  const tier = document.createElement("span");
  tier.className = "tier";
  tier.textContent = group.tier === "exact" ? "exact" : "near";
  const title = group.tier === "exact"
    ? `${group.size} files with the same bytes`
    : `${group.size} similar images, similarity ≥ ${group.min_score.toFixed(3)}`;
  section.querySelector("h2").append(tier, `Group ${group.group}: ${title}`);
  const list = section.querySelector(".files");
  for (const file of group.files) {
    const item = $("file-template").content.firstElementChild.cloneNode(true);
    item.dataset.id = file.id;
    item.querySelector(".open").href = file.image_url;
    const image = item.querySelector("img");
    image.src = file.thumbnail_url;
    image.alt = baseName(file.path);
    item.querySelector(".name").textContent = baseName(file.path);
    item.querySelector(".name").title = file.path;
    item.querySelector(".details").textContent = details(file);
    item.querySelector(".folder").textContent = file.path.split("/").slice(0, -1).join("/");
    const radio = item.querySelector("input");
    radio.name = `keep-${group.group}`;
    radio.value = file.id;
    radio.addEventListener("change", () => { state.keep.set(group.group, file.id); showChoices(); refreshExport(); });
    list.append(item);
  }
  return section;
}

function baseName(path) { return path.split("/").pop() || path; }

function details(file) {
  const parts = [];
  if (file.width && file.height) parts.push(`${file.width}×${file.height}`);
  parts.push(file.size >= 1e6 ? `${(file.size / 1e6).toFixed(1)} MB` : `${(file.size / 1e3).toFixed(1)} kB`);
  return parts.join(" · ");
}

// The marks follow the choices at once; reasons and the list of files not kept follow the server's answer.
function showChoices(review) {
  const reasons = new Map((review ? [...review.exact, ...review.near] : []).map((g) => [g.group, g]));
  const gone = new Set(review ? review.not_kept : []);
  for (const section of document.querySelectorAll("#groups .group")) {
    const number = Number(section.dataset.group);
    const keep = state.keep.get(number);
    for (const item of section.querySelectorAll(".file")) {
      const kept = Number(item.dataset.id) === keep;
      item.classList.toggle("kept", kept);
      item.querySelector("input").checked = kept;
      if (review) item.classList.toggle("gone", gone.has(item.querySelector(".name").title));
    }
    const reviewed = reasons.get(number);
    // The note says where the other tier overrides this group's choice (the library's group_notes).
    if (reviewed) section.querySelector(".reason").textContent = `Keep ${baseName(reviewed.keep)}: ${reviewed.reason}.` + (reviewed.note ? ` But ${reviewed.note}.` : "");
  }
}

function reviewBody() {
  return JSON.stringify({
    groups: state.groups.map((g) => ({ tier: g.tier, ids: g.files.map((f) => f.id), keep: state.keep.get(g.group), min_score: g.min_score })),
  });
}

function exportAs(format) {
  return api(`/api/indexes/${encodeURIComponent(state.index)}/duplicates/export?format=${format}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: reviewBody(),
  });
}

async function refreshExport() {
  showChoices();
  if (!state.groups.length) return;
  const run = ++state.exportRun;
  try {
    const review = await (await exportAs("json")).json();
    if (run !== state.exportRun) return; // a newer choice is on its way
    showChoices(review);
    $("not-kept").textContent = review.not_kept.join("\n");
    $("not-kept-count").textContent = review.not_kept.length;
    setStatus("");
  } catch (error) {
    if (run === state.exportRun) setStatus(`The review could not be updated: ${error.message}`, true);
  }
}

async function download(format) {
  try {
    const blob = await (await exportAs(format)).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${state.index}-${format === "nul" ? "not-kept.txt" : "duplicates." + format}`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (error) {
    setStatus(`Export failed: ${error.message}`, true);
  }
}

// For scripts and tests: what an export would download now.
window.cbirDuplicates = { exportText: async (format) => (await exportAs(format)).text() };

start();
