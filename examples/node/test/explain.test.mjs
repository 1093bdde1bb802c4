// node --test: the Node script's numbers against the values the Python runtime wrote.
//
// ONNX_EXPLAIN_REFERENCE names a folder with reference.json (written by the Python test
// tests/test_edge_consumers.py): the explain model, the image, the Python runtime's class,
// probabilities, top-5, and its heatmap per method as raw little-endian float32 files.
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";

import pngjs from "pngjs";

import { decodeImage, explainFile } from "../explain.mjs";
import { placement, readMetadata, topK } from "../../web/explain-core.mjs";

const folder = process.env.ONNX_EXPLAIN_REFERENCE;
const reference = folder && existsSync(join(folder, "reference.json"))
  ? JSON.parse(readFileSync(join(folder, "reference.json"), "utf8")) : null;
const skip = reference ? false : "ONNX_EXPLAIN_REFERENCE is not set (tests/test_edge_consumers.py sets it)";

function floats(path) {
  const b = readFileSync(path);
  return new Float32Array(b.buffer, b.byteOffset, b.length / 4);
}

function maxAbsDiff(a, b) {
  assert.equal(a.length, b.length, "map sizes differ");
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

test("class, probabilities and every map equal the Python runtime's", { skip }, async () => {
  for (const method of Object.keys(reference.maps)) {
    const r = await explainFile(reference.model, reference.image, { method });
    assert.equal(r.classIndex, reference.class_index, "class");
    assert.equal(r.label, reference.label, "label");
    assert.ok(Math.abs(r.probability - reference.probability) <= 1e-4, `probability ${r.probability} vs ${reference.probability}`);
    assert.deepEqual(r.top.map((t) => t.index), reference.top_classes, "top-5 classes");
    const diff = maxAbsDiff(r.heatmap, floats(join(folder, reference.maps[method])));
    assert.ok(diff <= reference.tolerance, `${method}: max abs difference ${diff} > ${reference.tolerance}`);
  }
});

test("the script writes the overlay at the photo's size, the heatmap visible in it", { skip }, () => {
  const out = join(mkdtempSync(join(tmpdir(), "onnx-explain-node-")), "overlay.png");
  const script = fileURLToPath(new URL("../explain.mjs", import.meta.url));
  const stdout = execFileSync(process.execPath, [script, reference.model, reference.image, "--out", out], { encoding: "utf8", timeout: 120_000 });
  assert.match(stdout, new RegExp(`explained: ${reference.label} \\(class ${reference.class_index}\\)`));
  const photo = decodeImage(reference.image);
  const overlay = pngjs.PNG.sync.read(readFileSync(out));
  assert.equal(overlay.width, photo.width);
  assert.equal(overlay.height, photo.height);
  // Where the map is hot (red, 1.0) the overlay is redder than the photo; where it is cold, bluer.
  const heat = floats(join(folder, reference.maps.gradcam));
  let hot = -1, cold = -1;
  for (let i = 0; i < heat.length; i++) {
    if (hot < 0 || heat[i] > heat[hot]) hot = i;
    if (cold < 0 || heat[i] < heat[cold]) cold = i;
  }
  const redness = (rgba, i) => rgba[4 * i] - rgba[4 * i + 2];
  assert.ok(redness(overlay.data, hot) > redness(photo.rgba, hot), "the hottest pixel is not redder in the overlay");
  assert.ok(redness(overlay.data, cold) < redness(photo.rgba, cold), "the coldest pixel is not bluer in the overlay");
});

test("metadata is read from the ONNX protobuf", () => {
  // ModelProto { ir_version: 8 (field 1), metadata_props (field 14): {key: "a", value: "b"} }
  const bytes = Uint8Array.from([0x08, 0x08, 0x72, 0x06, 0x0a, 0x01, 0x61, 0x12, 0x01, 0x62]);
  assert.deepEqual(readMetadata(bytes), { a: "b" });
  assert.throws(() => readMetadata(Uint8Array.from([0x72, 0x09, 0x0a])), /truncated/);
});

test("placement follows the Python runtime's resize policies", () => {
  const pre = { height: 224, width: 224, resize: "stretch", resizeShorter: null, padAlign: "center" };
  assert.deepEqual(placement(451, 300, pre), { resized: [224, 224], offset: [0, 0] });
  // torchvision's recipe: shorter side to 256, centre 224
  assert.deepEqual(placement(451, 300, { ...pre, resize: "center_crop", resizeShorter: 256 }),
    { resized: [256, 384], offset: [-16, -80] });
  assert.deepEqual(placement(451, 300, { ...pre, resize: "letterbox" }), { resized: [149, 224], offset: [37, 0] });
  assert.deepEqual(placement(451, 300, { ...pre, resize: "letterbox", padAlign: "topleft" }), { resized: [149, 224], offset: [0, 0] });
  assert.deepEqual(topK([0.1, 0.5, 0.2, 0.5], 3).map((t) => t.index), [1, 3, 2]);
});
