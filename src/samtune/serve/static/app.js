// samtune serve: one page, no build step. Every prompt goes to all models at once; each model
// answers on its own canvas. Canvases hold the image at its own resolution (CSS scales them),
// so a canvas pixel is an image pixel.
"use strict";

const MASK_RGB = [30, 144, 255];          // SAM's demo blue
const PALETTE = [[30, 144, 255], [255, 99, 71], [60, 179, 113], [255, 215, 0], [186, 85, 211],
  [0, 206, 209], [255, 140, 0], [199, 21, 133], [154, 205, 50], [70, 130, 180]];
const TRUTH_RGB = [0, 220, 90];
const SAVED_RGB = [255, 230, 0];
const DRAG_PX = 5;                         // a drag shorter than this (screen pixels) is a click

const S = {                                // the page state; window.samtune for scripts and tests
  info: null, image: null, img: null, truth: [], saved: [],
  prompts: [], history: [], results: {}, auto: null, mode: "prompt",
  seq: 0, pending: 0, lastError: null, predictions: 0,
};
window.samtune = S;

const $ = (id) => document.getElementById(id);

async function api(method, url, body) {
  const options = {method, headers: {}};
  if (body instanceof FormData) options.body = body;
  else if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(url, options);
  let data = null;
  try { data = await response.json(); } catch (e) { data = {error: `${response.status} ${response.statusText}`}; }
  if (!response.ok) throw new Error(data && data.error ? data.error : `HTTP ${response.status}`);
  return data;
}

function status(text, isError) {
  const el = $("status");
  el.textContent = text || "";
  el.className = isError ? "error" : "";
  if (isError) S.lastError = text;
}

function readyModels() { return S.info.models.filter((m) => m.ready); }

// --- start-up -------------------------------------------------------------------------------
async function start() {
  S.info = await api("GET", "/api/info");
  const failed = S.info.models.filter((m) => !m.ready);
  const problems = failed.map((m) => `model ${m.id} (${m.label}) failed to load: ${m.error}`);
  if (S.info.data_error) problems.push(S.info.data_error);
  if (problems.length) {
    const box = $("model-errors");
    box.hidden = false;
    box.innerHTML = "";
    for (const p of problems) { const d = document.createElement("div"); d.textContent = p; box.appendChild(d); }
  }
  $("data-line").textContent = S.info.data ? `data: ${S.info.data}, ${S.info.images} images` : "no dataset: upload an image";
  showCounts(S.info.corrections);
  buildPanels();
  const images = await api("GET", "/api/images");
  for (const entry of images) addImageOption(entry);
  buildReports();
  const wanted = new URLSearchParams(location.search).get("image") || (images[0] && images[0].id);
  if (wanted) { $("image-select").value = wanted; await openImage(wanted); }
}

function addImageOption(entry) {
  const select = $("image-select");
  if ([...select.options].some((o) => o.value === entry.id)) return;
  const option = document.createElement("option");
  option.value = entry.id;
  option.textContent = entry.kind === "upload" ? `${entry.name} (uploaded)` : entry.name;
  select.appendChild(option);
}

function showCounts(c) {
  $("saved-line").textContent = `saved: ${c.objects} object${c.objects === 1 ? "" : "s"} in ${c.images} image${c.images === 1 ? "" : "s"} -> ${c.folder}`;
  $("saved-line").dataset.objects = c.objects;
}

function buildPanels() {
  const main = $("panels");
  main.innerHTML = "";
  main.appendChild(panel("truth", "ground truth and saved masks"));
  for (const m of readyModels()) main.appendChild(panel(m.id, m.label));
}

function panel(id, title) {
  const div = document.createElement("div");
  div.className = "panel";
  div.id = `panel-${id}`;
  div.innerHTML = `<h3></h3><canvas id="canvas-${id}" data-model="${id}"></canvas>
    <div class="metrics" id="metrics-${id}"></div><div class="candidates" id="cands-${id}"></div>`;
  div.querySelector("h3").textContent = title;
  if (id !== "truth") {
    const accept = document.createElement("button");
    accept.id = `accept-${id}`;
    accept.className = "accept";
    accept.textContent = "accept this mask";
    accept.disabled = true;
    accept.onclick = () => acceptMask(id);
    div.appendChild(accept);
  }
  attachPointer(div.querySelector("canvas"));
  return div;
}

// --- images ---------------------------------------------------------------------------------
async function openImage(id) {
  status("opening ...");
  const meta = await api("GET", `/api/images/${encodeURIComponent(id)}`);
  const img = new Image();
  await new Promise((resolve, reject) => {
    img.onload = resolve;
    img.onerror = () => reject(new Error("the image did not load"));
    img.src = `/api/images/${encodeURIComponent(id)}/image.png`;
  });
  S.image = meta; S.img = img;
  S.truth = (meta.truth || []).map(decodeRle);
  S.prompts = []; S.history = []; S.results = {}; S.auto = null; S.mode = "prompt";
  for (const c of document.querySelectorAll("#panels canvas")) { c.width = meta.width; c.height = meta.height; }
  $("panel-truth").hidden = false;
  await loadSaved();
  redraw();
  status(`encoding ${meta.name} for ${readyModels().length} model(s) ...`);
  const t0 = performance.now();
  const encoded = await api("POST", "/api/encode", {image: id});
  const times = encoded.results.map((r) => `${r.model} ${r.encode_ms === null ? "kept" : r.encode_ms.toFixed(0) + " ms"}`);
  status(`${meta.name}: ${meta.width}x${meta.height}, ${S.truth.length} ground-truth objects; encoded (${times.join(", ")}) in ${(performance.now() - t0).toFixed(0)} ms. Click to prompt.`);
  document.body.dataset.image = id;
}

async function loadSaved() {
  const saved = await api("GET", `/api/masks/${encodeURIComponent(S.image.id)}`);
  S.saved = saved.objects.map((o) => ({id: o.id, mask: decodeRle(o.mask)}));
  const list = $("saved-list");
  list.innerHTML = "";
  $("saved-here").hidden = S.saved.length === 0;
  for (const o of S.saved) {
    const item = document.createElement("span");
    item.className = "saved-item";
    item.textContent = `object ${o.id} `;
    const del = document.createElement("button");
    del.textContent = "delete";
    del.onclick = async () => {
      try {
        const r = await api("DELETE", `/api/masks/${encodeURIComponent(S.image.id)}/${o.id}`);
        showCounts({...r, folder: S.info.corrections.folder});
        await loadSaved(); redraw();
      } catch (e) { status(e.message, true); }
    };
    item.appendChild(del);
    list.appendChild(item);
  }
  document.body.dataset.savedHere = S.saved.length;
}

async function upload(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    status(`uploading ${file.name} ...`);
    const meta = await api("POST", "/api/images", form);
    addImageOption({id: meta.id, name: meta.name, kind: "upload"});
    $("image-select").value = meta.id;
    await openImage(meta.id);
  } catch (e) { status(e.message, true); }
}

// --- prompts --------------------------------------------------------------------------------
function attachPointer(canvas) {
  let down = null;
  const toImage = (e) => {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
  };
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("mousedown", (e) => {
    if (!S.image) return;
    down = {x: e.clientX, y: e.clientY, at: toImage(e), button: e.button};
  });
  canvas.addEventListener("mousemove", (e) => {
    if (!down) return;
    if (Math.hypot(e.clientX - down.x, e.clientY - down.y) >= DRAG_PX) {
      redraw({box: boxOf(down.at, toImage(e))});
    }
  });
  canvas.addEventListener("mouseup", (e) => {
    if (!down) return;
    const start = down; down = null;
    const end = toImage(e);
    if (Math.hypot(e.clientX - start.x, e.clientY - start.y) >= DRAG_PX && start.button === 0) {
      addPrompt({type: "box", box: boxOf(start.at, end)});
    } else {
      const negative = start.button === 2 || $("negative").checked;
      addPrompt({type: "point", x: clampX(end[0]), y: clampY(end[1]), label: negative ? 0 : 1});
    }
  });
  canvas.addEventListener("mouseleave", () => { if (down) { down = null; redraw(); } });
}

const clampX = (x) => Math.min(Math.max(x, 0), S.image.width);
const clampY = (y) => Math.min(Math.max(y, 0), S.image.height);
function boxOf(a, b) {
  return [clampX(Math.min(a[0], b[0])), clampY(Math.min(a[1], b[1])),
          clampX(Math.max(a[0], b[0])), clampY(Math.max(a[1], b[1]))];
}

function addPrompt(prompt) {
  S.history.push(S.prompts.slice());
  // SAM takes one box per object: a new box replaces the old one
  S.prompts = prompt.type === "box" ? S.prompts.filter((p) => p.type !== "box").concat([prompt])
                                    : S.prompts.concat([prompt]);
  S.mode = "prompt";
  predict();
}

function undo() {
  if (!S.history.length) return;
  S.prompts = S.history.pop();
  S.mode = "prompt";
  predict();
}

function reset() {
  S.history = []; S.prompts = []; S.results = {}; S.auto = null; S.mode = "prompt";
  S.seq++;
  redraw(); renderMetrics();
}

async function predict() {
  const seq = ++S.seq;
  if (!S.prompts.length) { S.results = {}; redraw(); renderMetrics(); return; }
  const points = S.prompts.filter((p) => p.type === "point");
  const box = S.prompts.find((p) => p.type === "box");
  const body = {image: S.image.id, points: points.map((p) => [p.x, p.y]),
                labels: points.map((p) => p.label), box: box ? box.box : null,
                multimask: $("multimask").checked};
  redraw();
  S.pending++;
  const t0 = performance.now();
  try {
    const r = await api("POST", "/api/predict", body);
    if (seq !== S.seq) return;       // a newer prompt is on its way
    S.results = {};
    for (const res of r.results) {
      S.results[res.model] = {...res, decoded: res.masks.map(decodeRle), selected: res.best};
    }
    S.predictions++;
    const ms = performance.now() - t0;
    status(`${points.length} point(s)${box ? " + box" : ""}: masks in ${ms.toFixed(0)} ms (` +
      r.results.map((x) => `${x.model} ${x.encode_ms === null ? "" : "encode " + x.encode_ms.toFixed(0) + " ms + "}decode ${x.decode_ms.toFixed(0)} ms`).join(", ") + ")");
  } catch (e) {
    if (seq === S.seq) status(e.message, true);
  } finally {
    S.pending--;
  }
  redraw(); renderMetrics();
}

// --- segment everything ---------------------------------------------------------------------
async function segmentEverything() {
  if (!S.image) return;
  const seq = ++S.seq;
  const iou = $("iou-thresh").value;
  const body = {image: S.image.id, points_per_side: parseInt($("pps").value || "16", 10),
                stability_score_thresh: parseFloat($("stab-thresh").value || "0.95")};
  if (iou !== "") body.pred_iou_thresh = parseFloat(iou);
  status("segmenting everything ...");
  S.pending++;
  try {
    const r = await api("POST", "/api/auto", body);
    if (seq !== S.seq) return;
    S.auto = {};
    for (const res of r.results) S.auto[res.model] = {...res, decoded: res.masks.map((m) => decodeRle(m.mask))};
    S.mode = "auto";
    status("segment everything: " + r.results.map((x) => `${x.model} ${x.masks.length} masks in ${(x.ms / 1000).toFixed(1)} s`).join(", "));
  } catch (e) {
    if (seq === S.seq) status(e.message, true);
  } finally {
    S.pending--;
  }
  redraw(); renderMetrics();
}

// --- saving ---------------------------------------------------------------------------------
async function acceptMask(modelId) {
  const res = S.results[modelId];
  if (!res) return;
  try {
    const r = await api("POST", "/api/masks", {image: S.image.id, mask: res.masks[res.selected], model: modelId});
    S.history = []; S.prompts = []; S.results = {};   // ready for the next object, before the counts show
    showCounts(r);
    status(`saved object ${r.object} of ${S.image.name} from ${modelId} into ${r.folder}/${r.file}`);
    await loadSaved();
    redraw(); renderMetrics();
  } catch (e) { status(e.message, true); }
}

// --- drawing --------------------------------------------------------------------------------
function blend(data, mask, rgb, alpha) {
  for (let i = 0, j = 0; i < mask.length; i++, j += 4) {
    if (!mask[i]) continue;
    data[j] = (1 - alpha) * data[j] + alpha * rgb[0];
    data[j + 1] = (1 - alpha) * data[j + 1] + alpha * rgb[1];
    data[j + 2] = (1 - alpha) * data[j + 2] + alpha * rgb[2];
  }
}

function outline(data, mask, w, h, rgb) {
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      if (!mask[i]) continue;
      if (x === 0 || y === 0 || x === w - 1 || y === h - 1 || !mask[i - 1] || !mask[i + 1] || !mask[i - w] || !mask[i + w]) {
        const j = 4 * i;
        data[j] = rgb[0]; data[j + 1] = rgb[1]; data[j + 2] = rgb[2];
      }
    }
  }
}

function redraw(extra) {
  if (!S.image) return;
  const alpha = parseFloat($("opacity").value);
  const w = S.image.width, h = S.image.height;
  for (const canvas of document.querySelectorAll("#panels canvas")) {
    const id = canvas.dataset.model;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(S.img, 0, 0);
    const frame = ctx.getImageData(0, 0, w, h);
    if (id === "truth") {
      if ($("show-truth").checked) S.truth.forEach((m, k) => { blend(frame.data, m, PALETTE[(k + 2) % PALETTE.length], alpha * 0.8); outline(frame.data, m, w, h, TRUTH_RGB); });
      for (const o of S.saved) { blend(frame.data, o.mask, SAVED_RGB, alpha); outline(frame.data, o.mask, w, h, SAVED_RGB); }
    } else if (S.mode === "auto" && S.auto && S.auto[id]) {
      S.auto[id].decoded.forEach((m, k) => { blend(frame.data, m, PALETTE[k % PALETTE.length], alpha); outline(frame.data, m, w, h, PALETTE[k % PALETTE.length]); });
    } else {
      for (const o of S.saved) outline(frame.data, o.mask, w, h, SAVED_RGB);
      const res = S.results[id];
      if (res) { const m = res.decoded[res.selected]; blend(frame.data, m, MASK_RGB, alpha); outline(frame.data, m, w, h, MASK_RGB); }
    }
    ctx.putImageData(frame, 0, 0);
    drawPrompts(ctx, canvas, extra);
  }
}

function drawPrompts(ctx, canvas, extra) {
  const scale = canvas.width / Math.max(canvas.getBoundingClientRect().width, 1);
  ctx.lineWidth = 2 * scale;
  const boxes = S.prompts.filter((p) => p.type === "box").map((p) => p.box);
  if (extra && extra.box) boxes.push(extra.box);
  for (const [x0, y0, x1, y1] of boxes) {
    ctx.strokeStyle = "rgb(255,255,255)";
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.setLineDash([4 * scale, 4 * scale]);
    ctx.strokeStyle = "rgb(20,20,20)";
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.setLineDash([]);
  }
  for (const p of S.prompts.filter((q) => q.type === "point")) {
    ctx.beginPath();
    ctx.arc(p.x, p.y, 5 * scale, 0, 2 * Math.PI);
    ctx.fillStyle = p.label ? "rgb(0,200,0)" : "rgb(220,0,0)";
    ctx.fill();
    ctx.strokeStyle = "white";
    ctx.stroke();
  }
}

function renderMetrics() {
  for (const m of readyModels()) {
    const el = $(`metrics-${m.id}`), cands = $(`cands-${m.id}`), accept = $(`accept-${m.id}`);
    cands.innerHTML = "";
    if (S.mode === "auto" && S.auto && S.auto[m.id]) {
      const a = S.auto[m.id];
      el.textContent = `${a.masks.length} masks (IoU threshold ${a.pred_iou_thresh}), ${(a.ms / 1000).toFixed(1)} s`;
      if (a.masks.length && a.masks[0].category !== undefined) {  // a model with a class head
        const counts = {};
        for (const r of a.masks) counts[r.category] = (counts[r.category] || 0) + 1;
        el.textContent += ": " + Object.entries(counts).map(([c, n]) => `${n} ${c}`).join(", ");
      }
      accept.disabled = true;
      continue;
    }
    const res = S.results[m.id];
    accept.disabled = !res || !res.areas[res.selected];
    if (!res) { el.textContent = S.prompts.length ? "..." : ""; continue; }
    const k = res.selected;
    let text = `predicted IoU ${res.scores[k].toFixed(3)}`;
    if (res.categories) text = `${res.categories[k].name} (${res.categories[k].score.toFixed(2)}) · ${text}`;
    if (res.truth_iou) text += ` · IoU vs ground truth ${res.truth_iou[k].toFixed(3)} (object ${res.truth_object[k] + 1})`;
    text += ` · ${res.areas[k]} px`;
    el.textContent = text;
    el.dataset.area = res.areas[k];
    if (res.masks.length > 1) {
      res.scores.forEach((s, i) => {
        const b = document.createElement("button");
        b.textContent = `${i + 1}: ${s.toFixed(2)}${res.truth_iou ? " / " + res.truth_iou[i].toFixed(2) : ""}`;
        b.className = i === k ? "selected" : "";
        b.title = "predicted IoU / IoU vs ground truth";
        b.onclick = () => { res.selected = i; redraw(); renderMetrics(); };
        cands.appendChild(b);
      });
    }
  }
}

// --- eval reports ---------------------------------------------------------------------------
function buildReports() {
  const section = $("reports");
  for (const m of S.info.models.filter((x) => x.report)) {
    const details = document.createElement("details");
    details.id = `report-${m.id}`;
    details.innerHTML = `<summary>eval report of ${m.id}: ${m.run}</summary><div class="report-body">loading ...</div>`;
    details.addEventListener("toggle", () => { if (details.open && !details.dataset.loaded) loadReport(m.id, details); });
    section.appendChild(details);
  }
}

async function loadReport(id, details) {
  const body = details.querySelector(".report-body");
  try {
    const r = await api("GET", `/api/report/${id}`);
    details.dataset.loaded = "1";
    body.innerHTML = "";
    const info = r.metrics.info;
    const p = document.createElement("p");
    p.textContent = `${info.model} vs base ${info.base} on ${info.data} (split ${info.split}, ${info.n_images} images, ${info.n_objects} objects)`;
    body.appendChild(p);
    if ((r.metrics.warnings || []).length) {
      const warn = document.createElement("p");
      warn.className = "error";
      warn.textContent = "the fine-tuned model is worse than the base on: " + r.metrics.warnings.join(", ");
      body.appendChild(warn);
    }
    body.appendChild(metricTable(r.metrics));
    for (const [title, urls] of [["plots", r.plots], ["comparisons (image | ground truth | base | fine-tuned)", r.comparisons]]) {
      if (!urls.length) continue;
      const h = document.createElement("h4"); h.textContent = title; body.appendChild(h);
      for (const url of urls) { const img = document.createElement("img"); img.src = url; img.alt = url.split("/").pop(); img.className = "report-img"; body.appendChild(img); }
    }
  } catch (e) { body.textContent = e.message; }
}

function metricTable(metrics) {
  const table = document.createElement("table");
  const head = ["mode", "masks", "IoU base", "IoU fine-tuned", "Dice base", "Dice fine-tuned", "boundary F1 base", "boundary F1 fine-tuned", "AP base", "AP fine-tuned"];
  table.innerHTML = "<thead><tr>" + head.map((h) => `<th>${h}</th>`).join("") + "</tr></thead>";
  const tbody = document.createElement("tbody");
  const fmt = (v) => (v === null || v === undefined ? "-" : v.toFixed(3));
  for (const mode of metrics.modes) {
    const b = metrics.models.base[mode], t = metrics.models.tuned[mode];
    const cells = [mode, t.n_masks];
    for (const k of ["iou", "dice", "boundary_f1"]) cells.push(fmt(b.mask[k]), fmt(t.mask[k]));
    cells.push(mode === "auto" ? fmt(b.coco.AP) : "", mode === "auto" ? fmt(t.coco.AP) : "");
    const tr = document.createElement("tr");
    for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.appendChild(td); }
    tbody.appendChild(tr);
  }
  table.appendChild(tbody);
  return table;
}

// --- wiring ---------------------------------------------------------------------------------
$("image-select").addEventListener("change", (e) => { if (e.target.value) openImage(e.target.value).catch((err) => status(err.message, true)); });
$("upload").addEventListener("change", (e) => { if (e.target.files[0]) upload(e.target.files[0]); e.target.value = ""; });
$("undo").onclick = undo;
$("reset").onclick = reset;
$("auto").onclick = segmentEverything;
$("opacity").oninput = () => redraw();
$("show-truth").onchange = () => redraw();
$("multimask").onchange = () => predict();
document.addEventListener("keydown", (e) => {
  if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); undo(); }
  if (e.key === "Escape") reset();
});
start().catch((e) => status(`the page could not start: ${e.message}`, true));
