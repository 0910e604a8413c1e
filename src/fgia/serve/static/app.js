// fgia search page: upload or drop a photo, show the query with its confidence map and region, list results.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { objectUrl: null, response: null, image: null, busy: false };

function setStatus(text, kind = "") {
  const el = $("status");
  el.textContent = text;
  el.className = "status " + kind;
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    const detail = Array.isArray(body.detail) ? body.detail.map((d) => `${d.loc.slice(-1)}: ${d.msg}`).join("; ") : body.detail;
    return `${resp.status}: ${detail}`;
  } catch {
    return `${resp.status} ${resp.statusText}`;
  }
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot display this image"));
    img.src = url;
  });
}

// Colour ramp for the confidence map: transparent blue (low) -> opaque red/yellow (high).
function heatColour(t) {
  const r = Math.round(255 * Math.min(1, 2 * t));
  const g = Math.round(255 * Math.max(0, 2 * t - 1));
  const b = Math.round(255 * Math.max(0, 1 - 2 * t));
  return [r, g, b, Math.round(30 + 110 * t)];
}

function drawQuery() {
  const { image, response } = state;
  if (!image) return;
  const canvas = $("query-canvas");
  const scale = Math.min(1, 800 / Math.max(image.naturalWidth, image.naturalHeight));
  canvas.width = Math.round(image.naturalWidth * scale);
  canvas.height = Math.round(image.naturalHeight * scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  if (!response) return;
  const map = response.confidence_map;
  if (map && map.length && $("show-map").checked) {
    const h = map.length, w = map[0].length;
    const flat = map.flat();
    const lo = Math.min(...flat), span = Math.max(...flat) - lo || 1;
    const cells = new ImageData(w, h);
    flat.forEach((v, i) => cells.data.set(heatColour((v - lo) / span), 4 * i));
    const small = document.createElement("canvas");
    small.width = w; small.height = h;
    small.getContext("2d").putImageData(cells, 0, 0);
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
  }
  const box = response.region_box;
  if (box) {
    const sx = canvas.width / response.query_size[0], sy = canvas.height / response.query_size[1];
    ctx.lineWidth = Math.max(2, canvas.width / 200);
    ctx.strokeStyle = "#00e676";
    ctx.setLineDash([8, 4]);
    ctx.strokeRect(box[0] * sx, box[1] * sy, (box[2] - box[0]) * sx, (box[3] - box[1]) * sy);
  }
}

function showTimings(timings) {
  const table = $("timings");
  table.replaceChildren(...Object.entries(timings).map(([stage, ms]) => {
    const row = document.createElement("tr");
    row.innerHTML = "<td></td><td></td>";
    row.cells[0].textContent = stage;
    row.cells[1].textContent = `${ms.toFixed(1)} ms`;
    return row;
  }));
  table.hidden = false;
}

function showResults(hits) {
  $("result-count").textContent = `(${hits.length})`;
  $("results").replaceChildren(...hits.map((hit) => {
    const item = document.createElement("li");
    item.className = "result";
    item.tabIndex = 0;
    item.dataset.id = hit.id;
    item.title = `${hit.name} — click to search with this image`;
    const img = document.createElement("img");
    img.src = hit.thumb_url;
    img.alt = hit.label || hit.name;
    img.loading = "lazy";
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.innerHTML = '<span class="rank"></span><span class="distance"></span><span class="label"></span>';
    meta.querySelector(".rank").textContent = `#${hit.rank}`;
    meta.querySelector(".distance").textContent = `d = ${hit.distance.toFixed(3)}`;
    meta.querySelector(".label").textContent = hit.label || hit.name;
    item.append(img, meta);
    const requery = () => searchById(hit.id);
    item.addEventListener("click", requery);
    item.addEventListener("keydown", (e) => { if (e.key === "Enter") requery(); });
    return item;
  }));
}

async function search(file) {
  if (state.busy) return;
  state.busy = true;
  setStatus("Searching…", "busy");
  try {
    if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
    state.objectUrl = URL.createObjectURL(file);
    state.image = await loadImage(state.objectUrl);
    state.response = null;
    $("query").hidden = false;
    $("query-caption").textContent = file.name || "query";
    drawQuery();
    const form = new FormData();
    form.append("file", file, file.name || "query");
    form.append("top_k", $("top-k").value);
    form.append("pipeline", $("pipeline").value);
    form.append("query_expansion", $("qe").checked);
    const resp = await fetch("/search", { method: "POST", body: form });
    if (!resp.ok) throw new Error(await errorText(resp));
    state.response = await resp.json();
    drawQuery();
    const cat = state.response.category ? `predicted category: ${state.response.category}` : "";
    $("query-caption").textContent = [file.name, cat].filter(Boolean).join(" — ");
    showTimings(state.response.timings_ms);
    showResults(state.response.hits);
    setStatus(`${state.response.hits.length} results in ${state.response.timings_ms.request_total.toFixed(0)} ms.`);
  } catch (err) {
    setStatus(`Search failed — ${err.message}`, "error");
  } finally {
    state.busy = false;
  }
}

async function searchById(id) {
  const resp = await fetch(`/images/${id}`);
  if (!resp.ok) { setStatus(`Cannot load image ${id} — ${await errorText(resp)}`, "error"); return; }
  const blob = await resp.blob();
  const name = `database image ${id}`;
  await search(new File([blob], name, { type: blob.type }));
  window.scrollTo({ top: 0, behavior: "smooth" });
}

function init() {
  const zone = $("drop-zone"), input = $("file-input");
  input.addEventListener("change", () => { if (input.files[0]) search(input.files[0]); input.value = ""; });
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
  ["dragenter", "dragover"].forEach((t) => zone.addEventListener(t, (e) => { e.preventDefault(); zone.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => zone.addEventListener(t, () => zone.classList.remove("over")));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer.files[0];
    if (file) search(file);
  });
  // A file dropped outside the zone would otherwise make the browser navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  $("show-map").addEventListener("change", drawQuery);
}

init();
