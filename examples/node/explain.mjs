#!/usr/bin/env node
// Explain an image with an onnx-explain explain model in Node: onnxruntime-node, no Python.
//
//   node explain.mjs MODEL.onnx IMAGE.(png|jpg) [--method gradcam|gradcam_plusplus|layercam]
//        [--out overlay.png] [--alpha 0.5] [--top 5] [--json result.json]
//
// Prints the top classes; writes the photo with the heatmap laid over it.  The model is
// best written with the in-graph maps and preprocessing:
//   onnx-explain export efficientnet_lite0 -o edge.onnx \
//       --outputs target_class,gradcam,gradcam_plusplus,layercam,probabilities,top_k --pixels
import { readFileSync, writeFileSync } from "node:fs";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import jpeg from "jpeg-js";
import ort from "onnxruntime-node";
import pngjs from "pngjs";

import { MAP_OUTPUTS, blend, explain, mapToImage, readContract, toModelInput } from "../web/explain-core.mjs";

const { PNG } = pngjs;

/** Decode a PNG or JPEG file to RGBA bytes. */
export function decodeImage(path) {
  const bytes = readFileSync(path);
  if (bytes.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) {
    const png = PNG.sync.read(bytes, { skipRescale: false });
    return { rgba: new Uint8ClampedArray(png.data.buffer, png.data.byteOffset, png.data.length), width: png.width, height: png.height };
  }
  if (bytes[0] === 0xff && bytes[1] === 0xd8) {
    const img = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true, maxMemoryUsageInMB: 1024 });
    return { rgba: new Uint8ClampedArray(img.data.buffer, img.data.byteOffset, img.data.length), width: img.width, height: img.height };
  }
  throw new Error(`${path}: not a PNG or JPEG file`);
}

/** Write RGBA bytes as a PNG file. */
export function writePng(path, rgba, width, height) {
  const png = new PNG({ width, height });
  png.data = Buffer.from(rgba.buffer, rgba.byteOffset, rgba.length);
  writeFileSync(path, PNG.sync.write(png));
}

/**
 * Explain one image file: the class explained, the top-k, every in-graph map on the
 * model's input grid (`maps`) and the chosen one on the photo's pixels (`heatmap`).
 */
export async function explainFile(modelPath, imagePath, { method = "gradcam", top = 5, session = null } = {}) {
  const bytes = new Uint8Array(readFileSync(modelPath));
  const contract = readContract(bytes);
  const image = decodeImage(imagePath);
  const input = toModelInput(image.rgba, image.width, image.height, contract.preprocess);
  const sess = session ?? (await ort.InferenceSession.create(bytes));
  const result = await explain(ort, sess, contract, input.rgba, { k: top });
  if (!result.maps[method]) {
    const have = Object.keys(result.maps);
    throw new Error(`${modelPath} has no ${method} output (it has: ${have.length ? have.join(", ") : "no map"}); ` +
      `export it with --outputs ${MAP_OUTPUTS.join(",")},probabilities,top_k`);
  }
  const heatmap = mapToImage(result.maps[method], input.geometry);
  return { ...result, method, image, heatmap };
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      method: { type: "string", default: "gradcam" },
      out: { type: "string" },
      alpha: { type: "string", default: "0.5" },
      top: { type: "string", default: "5" },
      json: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help || positionals.length !== 2) {
    console.log("usage: node explain.mjs MODEL.onnx IMAGE [--method gradcam|gradcam_plusplus|layercam] " +
      "[--out overlay.png] [--alpha 0.5] [--top 5] [--json result.json]");
    process.exit(values.help ? 0 : 2);
  }
  const [modelPath, imagePath] = positionals;
  const alpha = Number(values.alpha);
  if (!(alpha >= 0 && alpha <= 1)) throw new Error(`--alpha must be in 0..1, got ${values.alpha}`);
  const t0 = performance.now();
  const r = await explainFile(modelPath, imagePath, { method: values.method, top: Number(values.top) });
  for (const [i, t] of r.top.entries()) console.log(`${i + 1}. ${t.label}  p=${t.probability.toFixed(4)}  (class ${t.index})`);
  console.log(`explained: ${r.label} (class ${r.classIndex}), ${values.method}, ${(performance.now() - t0).toFixed(0)} ms`);
  const out = values.out ?? imagePath.replace(/\.[^./]+$/, "") + `.${values.method}.png`;
  writePng(out, blend(r.image.rgba, r.heatmap, r.image.width, r.image.height, alpha), r.image.width, r.image.height);
  console.log(`wrote ${out}`);
  if (values.json) {
    const { image, heatmap, maps, ...rest } = r;
    writeFileSync(values.json, JSON.stringify({ ...rest, overlay: resolve(out) }, null, 1));
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    console.error(`error: ${e.message ?? e}`);
    process.exit(1);
  });
}
