// srserve's web page: pick an image, model and scale, run it as a job (POST /v1/jobs), follow its
// progress (GET /v1/jobs/{id}), then show the result beside the input. Plain JavaScript, no build
// step, nothing loaded from other hosts.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 250;
const MIN_SHOWN = 512; // px: small results are shown enlarged, pixels kept sharp
let models = [];
let chosen = null; // the File to upscale
let resultUrl = null;

function headers(extra = {}) {
  const key = $("apikey").value.trim();
  return key ? { ...extra, "X-API-Key": key } : extra;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

// The server's JSON error ({"error", "detail"}) as one line; anything else as its status.
async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error) return `${body.error}: ${body.detail}`;
  } catch (_) { /* not JSON */ }
  return `HTTP ${response.status} ${response.statusText}`;
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (response.status === 401) {
    $("key-field").hidden = false;
    showError(await errorText(response));
    return;
  }
  if (!response.ok) { showError(await errorText(response)); return; }
  showError("");
  const info = await response.json();
  models = info.models;
  const select = $("model");
  select.replaceChildren(...models.map((m) => new Option(`${m.name} (${m.architecture}${m.trained_for === "real-world" ? ", for real photos" : ""})`, m.name)));
  // the page is where people bring photos: a model trained for real-world inputs goes first
  const forPhotos = models.find((m) => m.trained_for === "real-world");
  select.value = forPhotos ? forPhotos.name : info.default_model;
  fillScales(info.default_scale);
  updateButton();
}

function fillScales(preferred) {
  const model = models.find((m) => m.name === $("model").value);
  if (!model) return;
  const scales = model.scales;
  $("scale").replaceChildren(...scales.map((s) => new Option(`×${s}`, String(s))));
  const pick = scales.includes(preferred) ? preferred : (scales.includes(4) ? 4 : Math.max(...scales));
  $("scale").value = String(pick);
}

function updateButton() {
  $("upscale").disabled = !(chosen && models.length);
}

function choose(file) {
  if (!file) return;
  chosen = file;
  const kb = `${Math.round(file.size / 1024)} KB`;
  $("drop-text").textContent = kb;
  const probe = new Image();
  probe.onload = () => { $("drop-text").textContent = `${probe.naturalWidth}×${probe.naturalHeight}, ${kb}`; };
  probe.src = URL.createObjectURL(file);
  showError("");
  updateButton();
}

function setProgress(value, text) {
  $("progress").value = value;
  $("status").textContent = text;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function upscale() {
  if (!chosen) return;
  showError("");
  $("upscale").disabled = true;
  $("output").hidden = true;
  const started = performance.now();
  const query = new URLSearchParams({ model: $("model").value, scale: $("scale").value });
  setProgress(0, "uploading…");
  try {
    const created = await fetch(`/v1/jobs?${query}`, {
      method: "POST", body: chosen,
      headers: headers({ "Content-Type": chosen.type || "application/octet-stream" }),
    });
    if (!created.ok) throw new Error(await errorText(created));
    const job = await created.json();
    const status = await follow(job.links.self);
    const result = await fetch(status.links.result, { headers: headers() });
    if (!result.ok) throw new Error(await errorText(result));
    show(await result.blob(), status, (performance.now() - started) / 1000);
  } catch (err) {
    setProgress(0, "");
    showError(err.message);
  } finally {
    updateButton();
  }
}

// Polls the job until it ends; rejects with the server's error when it fails.
async function follow(url) {
  for (;;) {
    const response = await fetch(url, { headers: headers() });
    if (!response.ok) throw new Error(await errorText(response));
    const job = await response.json();
    const eta = job.eta_s == null ? "" : `, about ${Math.ceil(job.eta_s)} s left`;
    setProgress(job.progress, `${job.status}: ${job.tiles_done}/${job.tiles_total} tiles${eta}`);
    if (job.status === "done") return job;
    if (job.status === "failed") throw new Error(`${job.error.error}: ${job.error.detail}`);
    if (job.status === "cancelled") throw new Error("cancelled: the job was cancelled");
    await sleep(POLL_MS);
  }
}

function show(blob, job, seconds) {
  if (resultUrl) URL.revokeObjectURL(resultUrl);
  resultUrl = URL.createObjectURL(blob);
  const r = job.result;
  const base = chosen.name.replace(/\.[^.]*$/, "");
  const ext = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" }[r.media_type] || "png";
  $("before").src = URL.createObjectURL(chosen);
  $("result").src = resultUrl;
  $("download").href = resultUrl;
  $("download").download = `${base}_x${r.scale}.${ext}`;
  $("info").textContent = `${r.width}×${r.height} (×${r.scale}, ${r.model} on ${r.backend}${r.precision ? " " + r.precision : ""}), ${(blob.size / 1024).toFixed(0)} KB, `
    + `${seconds.toFixed(1)} s${r.cache === "hit" ? " (cached)" : ""}`;
  $("result").onload = () => {
    // both halves at one display size (at least MIN_SHOWN px, at most the page's width) so they line up
    const room = $("output").clientWidth - 36;
    $("before").style.width = `${Math.min(Math.max($("result").naturalWidth, MIN_SHOWN), room)}px`;
  };
  setProgress(1, `done in ${seconds.toFixed(1)} s`);
  $("output").hidden = false;
}

function slide() {
  const v = Number($("slider").value);
  $("after-clip").style.clipPath = `inset(0 ${100 - v}% 0 0)`;
  $("divider").style.left = `${v}%`;
}

function init() {
  $("file").addEventListener("change", (e) => choose(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    choose(e.dataTransfer.files[0]);
  });
  $("model").addEventListener("change", () => fillScales(Number($("scale").value)));
  $("apikey").addEventListener("change", loadModels);
  $("upscale").addEventListener("click", upscale);
  $("slider").addEventListener("input", slide);
  slide();
  loadModels();
}

init();
