// The page: load an explain model and a photo, run it with onnxruntime-web (WebAssembly),
// show the top-5 and the heatmap over the photo.
//
// URL parameters (all optional): model=URL of the explain model [model/explain.onnx],
// image=URL of the photo [sample/chelsea.png], method=gradcam|gradcam_plusplus|layercam,
// opacity=0..1.
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";
import { MAP_TITLES, explain, placement, readContract, colorize } from "./explain-core.mjs";

ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
// Threads need a cross-origin isolated page (SharedArrayBuffer); one thread otherwise.
ort.env.wasm.numThreads = globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const view = $("view");
const state = { session: null, contract: null, result: null, bitmap: null, geometry: null };
let runs = 0; // calls done: a test waits for the next one

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
  if (error) document.body.dataset.state = "error";
}

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

async function loadModel(bytes, name) {
  document.body.dataset.state = "loading";
  setStatus(`Loading ${name}...`);
  const contract = readContract(bytes);
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  state.session = session;
  state.contract = contract;
  const select = $("method");
  const wanted = params.get("method") ?? select.value;
  select.replaceChildren();
  for (const name of Object.keys(MAP_TITLES)) {
    if (session.outputNames.includes(name)) select.append(new Option(MAP_TITLES[name], name));
  }
  if (!select.options.length) {
    throw new Error(`${name} has no in-graph map (gradcam, gradcam_plusplus, layercam): export it with ` +
      "--outputs gradcam,... (see README, \"Beyond Python\")");
  }
  if ([...select.options].some((o) => o.value === wanted)) select.value = wanted;
}

/** The photo drawn onto the model's input grid (the metadata's resize policy), as RGBA. */
function toModelInput(bitmap) {
  const pre = state.contract.preprocess;
  const { resized, offset } = placement(bitmap.width, bitmap.height, pre);
  const canvas = new OffscreenCanvas(pre.width, pre.height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const pad = pre.padValue.length === 3 && pre.color === "BGR" ? [...pre.padValue].reverse() : pre.padValue;
  const [r, g, b] = pad.length === 3 ? pad : [pad[0], pad[0], pad[0]];
  ctx.fillStyle = `rgb(${r}, ${g}, ${b})`;
  ctx.fillRect(0, 0, pre.width, pre.height);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, offset[1], offset[0], resized[1], resized[0]);
  state.geometry = { resized, offset, width: pre.width, height: pre.height };
  return ctx.getImageData(0, 0, pre.width, pre.height).data;
}

async function run() {
  if (!state.session || !state.bitmap) return;
  document.body.dataset.state = "running";
  setStatus("Running...");
  const rgba = toModelInput(state.bitmap);
  const t0 = performance.now();
  state.result = await explain(ort, state.session, state.contract, rgba, { k: 5 });
  const ms = performance.now() - t0;
  const top = $("top");
  top.replaceChildren(...state.result.top.map((t) => {
    const li = document.createElement("li");
    li.textContent = t.label;
    const p = document.createElement("span");
    p.className = "p";
    p.textContent = `${(100 * t.probability).toFixed(1)} %`;
    li.append(p);
    return li;
  }));
  $("timing").textContent = `one call: ${ms.toFixed(0)} ms (WebAssembly, ${ort.env.wasm.numThreads} thread(s))`;
  draw();
  setStatus(`${state.result.label}, p = ${state.result.probability.toFixed(2)}: ${MAP_TITLES[$("method").value]}`);
  runs += 1;
  window.onnxExplain = { result: state.result, method: $("method").value, runs };
  document.body.dataset.state = "done";
}

/** The photo at display size with the chosen map laid over it. */
function draw() {
  const { bitmap, result, geometry } = state;
  if (!bitmap || !result) return;
  const fit = Math.min(448 / bitmap.width, 448 / bitmap.height);
  view.width = Math.round(bitmap.width * fit);
  view.height = Math.round(bitmap.height * fit);
  const ctx = view.getContext("2d");
  ctx.globalAlpha = 1;
  ctx.drawImage(bitmap, 0, 0, view.width, view.height);
  const map = result.maps[$("method").value];
  if (!map) return;
  const heat = new OffscreenCanvas(result.width, result.height);
  heat.getContext("2d").putImageData(new ImageData(colorize(map, result.width, result.height), result.width, result.height), 0, 0);
  // The part of the input grid that shows the photo, and where it lies on the photo.
  const [oy, ox] = geometry.offset;
  const [nh, nw] = geometry.resized;
  const x0 = Math.max(ox, 0), y0 = Math.max(oy, 0);
  const x1 = Math.min(ox + nw, geometry.width), y1 = Math.min(oy + nh, geometry.height);
  const sx = bitmap.width / nw, sy = bitmap.height / nh;
  ctx.globalAlpha = Number($("opacity").value);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(heat, x0, y0, x1 - x0, y1 - y0,
    (x0 - ox) * sx * fit, (y0 - oy) * sy * fit, (x1 - x0) * sx * fit, (y1 - y0) * sy * fit);
  ctx.globalAlpha = 1;
}

async function loadImage(blob) {
  state.bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  await run();
}

function guarded(fn) {
  return async (...args) => {
    try {
      await fn(...args);
    } catch (e) {
      console.error(e);
      setStatus(String(e.message ?? e), true);
    }
  };
}

$("model-file").addEventListener("change", guarded(async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  await loadModel(new Uint8Array(await file.arrayBuffer()), file.name);
  await run();
}));
$("image-file").addEventListener("change", guarded(async (event) => {
  const file = event.target.files[0];
  if (file) await loadImage(file);
}));
$("sample").addEventListener("click", guarded(async () => {
  await loadImage(new Blob([await fetchBytes(params.get("image") ?? "sample/chelsea.png")]));
}));
$("method").addEventListener("change", () => {
  draw();
  if (state.result) {
    setStatus(`${state.result.label}, p = ${state.result.probability.toFixed(2)}: ${MAP_TITLES[$("method").value]}`);
    window.onnxExplain = { result: state.result, method: $("method").value, runs };
  }
});
$("opacity").addEventListener("input", () => {
  $("opacity-value").textContent = Number($("opacity").value).toFixed(2);
  draw();
});
if (params.get("opacity") !== null) {
  $("opacity").value = params.get("opacity");
  $("opacity-value").textContent = Number($("opacity").value).toFixed(2);
}

guarded(async () => {
  const image = params.get("image") ?? "sample/chelsea.png";
  state.bitmap = await createImageBitmap(new Blob([await fetchBytes(image)]),
    { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const url = params.get("model") ?? "model/explain.onnx";
  let bytes;
  try {
    bytes = await fetchBytes(url);
  } catch (e) {
    throw new Error(`${e.message}. Choose an explain model above, or write one there: onnx-explain export ` +
      "efficientnet_lite0 --outputs target_class,gradcam,gradcam_plusplus,layercam,probabilities,top_k --pixels " +
      "-o examples/web/model/explain.onnx");
  }
  await loadModel(bytes, url);
  await run();
})();
