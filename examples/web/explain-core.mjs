// Running an onnx-explain explain model from JavaScript: the parts the browser page and the
// Node script share.  No dependency: the ONNX Runtime module (onnxruntime-web or
// onnxruntime-node) is passed in, images are RGBA byte arrays.
//
// The explain model describes itself in its metadata (`onnx_explain.*`): preprocessing,
// class labels, which output is which.  A file written with `--pixels` takes the decoded
// photo as it is (`pixels`, uint8 N x H x W x 3 RGB at the model's size) and does the
// scaling / normalisation in the graph; for a file with the float input this module
// applies the same recipe (the Python runtime's float32 arithmetic).

export const MAP_OUTPUTS = ["gradcam", "gradcam_plusplus", "layercam"];
export const MAP_TITLES = { gradcam: "Grad-CAM", gradcam_plusplus: "Grad-CAM++", layercam: "LayerCAM" };

// --------------------------------------------------------------------------- metadata

function readVarint(bytes, pos) {
  let value = 0;
  let scale = 1;
  for (;;) {
    if (pos >= bytes.length) throw new Error("truncated ONNX file (varint)");
    const b = bytes[pos++];
    value += (b & 0x7f) * scale;
    if (b < 0x80) return [value, pos];
    scale *= 128;
    if (scale > 2 ** 63) throw new Error("malformed ONNX file (varint too long)");
  }
}

function readFields(bytes, start, end, visit) {
  let pos = start;
  while (pos < end) {
    let tag;
    [tag, pos] = readVarint(bytes, pos);
    const field = Math.floor(tag / 8);
    const wire = tag % 8;
    if (wire === 0) {
      [, pos] = readVarint(bytes, pos);
    } else if (wire === 1) {
      pos += 8;
    } else if (wire === 5) {
      pos += 4;
    } else if (wire === 2) {
      let length;
      [length, pos] = readVarint(bytes, pos);
      if (pos + length > end) throw new Error("truncated ONNX file (field " + field + ")");
      visit(field, pos, pos + length);
      pos += length;
    } else {
      throw new Error("not an ONNX file (wire type " + wire + ")");
    }
  }
  if (pos !== end) throw new Error("truncated ONNX file");
}

/** The model's `metadata_props` (ModelProto field 14) as a plain object. */
export function readMetadata(bytes) {
  const text = new TextDecoder();
  const props = {};
  readFields(bytes, 0, bytes.length, (field, start, end) => {
    if (field !== 14) return;
    let key = "";
    let value = "";
    readFields(bytes, start, end, (f, s, e) => {
      if (f === 1) key = text.decode(bytes.subarray(s, e));
      if (f === 2) value = text.decode(bytes.subarray(s, e));
    });
    props[key] = value;
  });
  return props;
}

function json(props, key, fallback) {
  const text = props["onnx_explain." + key];
  if (text === undefined) return fallback;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`metadata onnx_explain.${key} is not valid JSON`);
  }
}

/** What the page and the script need to know about an explain model, from its metadata. */
export function readContract(bytes) {
  const props = readMetadata(bytes);
  if (props["onnx_explain.version"] === undefined) {
    throw new Error("not an explain model (no onnx_explain.* metadata): run `onnx-explain augment` or `export` first");
  }
  const pre = json(props, "preprocess", {});
  const size = Array.isArray(pre.size) ? pre.size : [pre.size ?? 224, pre.size ?? 224];
  const channels = (v) => (Array.isArray(v) ? v : [v]);
  return {
    labels: json(props, "labels", null),
    outputs: json(props, "outputs", {}),
    pixels: json(props, "pixels", null),
    preprocess: {
      height: size[0],
      width: size[1],
      layout: pre.layout ?? "NCHW",
      color: pre.color ?? "RGB",
      scale: pre.scale ?? 1 / 255,
      mean: channels(pre.mean ?? [0.485, 0.456, 0.406]),
      std: channels(pre.std ?? [0.229, 0.224, 0.225]),
      resize: pre.resize ?? "stretch",
      resizeShorter: pre.resize_shorter ?? null,
      padValue: channels(pre.pad_value ?? 0),
      padAlign: pre.pad_align ?? "center",
    },
  };
}

// --------------------------------------------------------------------------- geometry

/**
 * Where the photo goes on the model's input (the Python runtime's `preprocess` rules):
 * the photo is resized to `resized` and placed with its top-left corner at `offset`
 * (negative where centre-cropping cuts it, positive where letterboxing pads before it).
 */
export function placement(imageWidth, imageHeight, pre) {
  const H = pre.height;
  const W = pre.width;
  let nh;
  let nw;
  if (pre.resize === "center_crop") {
    if (pre.resizeShorter) {
      const s = pre.resizeShorter;
      [nh, nw] = imageHeight <= imageWidth ? [s, Math.floor((s * imageWidth) / imageHeight)]
        : [Math.floor((s * imageHeight) / imageWidth), s];
    } else {
      const f = Math.max(H / imageHeight, W / imageWidth);
      [nh, nw] = [Math.max(H, Math.round(imageHeight * f)), Math.max(W, Math.round(imageWidth * f))];
    }
  } else if (pre.resize === "letterbox") {
    const f = Math.min(H / imageHeight, W / imageWidth);
    [nh, nw] = [Math.min(H, Math.max(1, Math.round(imageHeight * f))), Math.min(W, Math.max(1, Math.round(imageWidth * f)))];
  } else {
    [nh, nw] = [H, W];
  }
  const place = (n, target) => (n < target ? [pre.padAlign === "center" ? Math.floor((target - n) / 2) : 0, 0]
    : [0, Math.round((n - target) / 2)]);
  const [padY, cropY] = place(nh, H);
  const [padX, cropX] = place(nw, W);
  return { resized: [nh, nw], offset: [padY - cropY, padX - cropX] };
}

// --------------------------------------------------------------------------- resizing

/** Weights of one output sample along an axis: [[index, weight], ...]. */
function axisWeights(nIn, nOut) {
  const rows = [];
  if (nOut <= nIn) {
    // area: the average of the input cells the output cell covers (OpenCV's INTER_AREA)
    const scale = nIn / nOut;
    for (let o = 0; o < nOut; o++) {
      const a = o * scale;
      const b = (o + 1) * scale;
      const row = [];
      for (let i = Math.floor(a); i < Math.min(nIn, Math.ceil(b)); i++) {
        const w = Math.min(b, i + 1) - Math.max(a, i);
        if (w > 1e-12) row.push([i, w / scale]);
      }
      rows.push(row);
    }
  } else {
    // bilinear with half-pixel centres, edges repeated (OpenCV's INTER_LINEAR)
    const scale = nIn / nOut;
    for (let o = 0; o < nOut; o++) {
      const x = Math.min(Math.max((o + 0.5) * scale - 0.5, 0), nIn - 1);
      const i0 = Math.floor(x);
      const i1 = Math.min(i0 + 1, nIn - 1);
      const t = x - i0;
      rows.push(t > 0 ? [[i0, 1 - t], [i1, t]] : [[i0, 1]]);
    }
  }
  return rows;
}

/**
 * Resize RGBA bytes (area when shrinking, bilinear when enlarging, each axis on its own:
 * the Python runtime's rules; OpenCV's fixed-point rounding is not reproduced, so the
 * pixels can differ by one level from the Python runtime's where the size changes).
 */
export function resizeRGBA(rgba, width, height, newWidth, newHeight) {
  if (width === newWidth && height === newHeight) return rgba;
  const wx = axisWeights(width, newWidth);
  const wy = axisWeights(height, newHeight);
  const rows = new Float64Array(height * newWidth * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < newWidth; x++) {
      for (const [i, w] of wx[x]) {
        const s = (y * width + i) * 4;
        const d = (y * newWidth + x) * 4;
        for (let c = 0; c < 4; c++) rows[d + c] += w * rgba[s + c];
      }
    }
  }
  const out = new Uint8ClampedArray(newHeight * newWidth * 4);
  for (let y = 0; y < newHeight; y++) {
    for (let x = 0; x < newWidth; x++) {
      const d = (y * newWidth + x) * 4;
      for (let c = 0; c < 4; c++) {
        let v = 0;
        for (const [j, w] of wy[y]) v += w * rows[(j * newWidth + x) * 4 + c];
        out[d + c] = Math.round(v);
      }
    }
  }
  return out;
}

/** The photo (RGBA) on the model's input grid, per the metadata's resize policy and padding. */
export function toModelInput(rgba, width, height, pre) {
  const { resized, offset } = placement(width, height, pre);
  const [nh, nw] = resized;
  const [oy, ox] = offset;
  const image = resizeRGBA(rgba, width, height, nw, nh);
  const H = pre.height;
  const W = pre.width;
  const pad = pre.padValue.length === 3 && pre.color === "BGR" ? [...pre.padValue].reverse() : pre.padValue;
  const fill = pad.length === 3 ? pad : [pad[0], pad[0], pad[0]];
  const out = new Uint8ClampedArray(H * W * 4);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const d = (y * W + x) * 4;
      const sy = y - oy;
      const sx = x - ox;
      if (sy >= 0 && sy < nh && sx >= 0 && sx < nw) {
        const s = (sy * nw + sx) * 4;
        out[d] = image[s];
        out[d + 1] = image[s + 1];
        out[d + 2] = image[s + 2];
      } else {
        [out[d], out[d + 1], out[d + 2]] = fill;
      }
      out[d + 3] = 255;
    }
  }
  return { rgba: out, geometry: { resized, offset, width: W, height: H, imageWidth: width, imageHeight: height } };
}

/**
 * A map on the model's input grid, resampled onto the photo's pixels (bilinear, only the
 * part of the input that shows the photo; 0 where centre-cropping cut the photo away),
 * as the Python runtime's `Geometry.to_original`.
 */
export function mapToImage(map, geometry) {
  const { resized: [nh, nw], offset: [oy, ox], width: W, height: H, imageWidth: w0, imageHeight: h0 } = geometry;
  const axis = (n0, n, o, extent) => {
    const lo = Math.max(0, Math.ceil(Math.max(o, 0) - 0.5));
    const hi = Math.min(extent - 1, Math.ceil(Math.min(o + n, extent) - 0.5) - 1);
    return Array.from({ length: n0 }, (_, i) => {
      const u = (i + 0.5) * (n / n0) + o;
      if (u < 0 || u >= extent) return null;
      const pos = Math.min(Math.max(u - 0.5, lo), Math.max(lo, hi));
      const i0 = Math.floor(pos);
      return [i0, Math.min(i0 + 1, Math.max(lo, hi)), pos - i0];
    });
  };
  const ys = axis(h0, nh, oy, H);
  const xs = axis(w0, nw, ox, W);
  const out = new Float32Array(h0 * w0);
  for (let y = 0; y < h0; y++) {
    if (!ys[y]) continue;
    const [y0, y1, ty] = ys[y];
    for (let x = 0; x < w0; x++) {
      if (!xs[x]) continue;
      const [x0, x1, tx] = xs[x];
      const top = map[y0 * W + x0] + (map[y0 * W + x1] - map[y0 * W + x0]) * tx;
      const bottom = map[y1 * W + x0] + (map[y1 * W + x1] - map[y1 * W + x0]) * tx;
      out[y * w0 + x] = top + (bottom - top) * ty;
    }
  }
  return out;
}

// --------------------------------------------------------------------------- inputs

/**
 * The model's image feed from an RGBA image already at the model's input size
 * (`rgba`: width * height * 4 bytes, as a canvas or a PNG decoder gives it).
 */
export function imageTensor(ort, contract, rgba, batch = 1) {
  const { height: H, width: W } = contract.preprocess;
  if (rgba.length !== H * W * 4 * batch) {
    throw new Error(`the image must be ${W}x${H} RGBA (the model's input size), got ${rgba.length} bytes`);
  }
  if (contract.pixels) {
    const pixels = new Uint8Array(batch * H * W * 3);
    for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
      pixels[j] = rgba[i];
      pixels[j + 1] = rgba[i + 1];
      pixels[j + 2] = rgba[i + 2];
    }
    return { name: contract.pixels.input ?? "pixels", tensor: new ort.Tensor("uint8", pixels, [batch, H, W, 3]) };
  }
  // The Python runtime's float32 recipe: (pixel * scale - mean) / std, in the model's
  // colour order and layout (Math.fround after each step: float32 arithmetic).
  const pre = contract.preprocess;
  const f = Math.fround;
  const gray = pre.color === "GRAY";
  const C = gray ? 1 : 3;
  const order = pre.color === "BGR" ? [2, 1, 0] : [0, 1, 2];
  const scale = f(pre.scale);
  const mean = Array.from({ length: C }, (_, c) => f(pre.mean[pre.mean.length === 1 ? 0 : c]));
  const std = Array.from({ length: C }, (_, c) => f(pre.std[pre.std.length === 1 ? 0 : c]));
  const data = new Float32Array(batch * C * H * W);
  const nchw = pre.layout === "NCHW";
  for (let n = 0; n < batch; n++) {
    for (let p = 0; p < H * W; p++) {
      const i = (n * H * W + p) * 4;
      for (let c = 0; c < C; c++) {
        const v = gray
          ? f(f(f(rgba[i] * f(0.299)) + f(rgba[i + 1] * f(0.587))) + f(rgba[i + 2] * f(0.114)))
          : rgba[i + order[c]];
        const out = f(f(f(v * scale) - mean[c]) / std[c]);
        data[nchw ? (n * C + c) * H * W + p : (n * H * W + p) * C + c] = out;
      }
    }
  }
  return { name: null, tensor: new ort.Tensor("float32", data, nchw ? [batch, C, H, W] : [batch, H, W, C]) };
}

// --------------------------------------------------------------------------- running

export function softmax(logits) {
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  const e = Array.from(logits, (v) => Math.exp(v - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

export function topK(probabilities, k) {
  return Array.from(probabilities, (p, i) => [p, i])
    .sort((a, b) => b[0] - a[0] || a[1] - b[1])
    .slice(0, k)
    .map(([p, i]) => ({ index: i, probability: p }));
}

/**
 * Run the explain model on one RGBA image at the model's size.  Returns the class
 * explained, the top-k (labels from the metadata) and every map the file has
 * (Float32Array, height * width, in [0, 1]).
 */
export async function explain(ort, session, contract, rgba, { k = 5 } = {}) {
  const { name, tensor } = imageTensor(ort, contract, rgba);
  const imageName = name ?? session.inputNames.find((n) => n !== "target" && !n.startsWith("compute_"));
  const feeds = { [imageName]: tensor };
  if (session.inputNames.includes("target")) feeds.target = new ort.Tensor("int64", BigInt64Array.from([-1n]), [1]);
  const wanted = session.outputNames;
  const out = await session.run(feeds, wanted);
  const roles = contract.outputs;
  let top;
  let probabilities;
  if (out.top_k_values && out.top_k_indices && out.top_k_values.dims[1] >= k) {
    top = Array.from(out.top_k_values.data.slice(0, k), (p, i) => ({ index: Number(out.top_k_indices.data[i]), probability: p }));
  }
  if (out.probabilities) {
    probabilities = Float32Array.from(out.probabilities.data);
  } else {
    const own = roles.probabilities ?? roles.logits ?? wanted[0];
    probabilities = roles.probabilities ? Float32Array.from(out[own].data) : Float32Array.from(softmax(out[own].data));
  }
  top = top ?? topK(probabilities, k);
  const label = (i) => (contract.labels && contract.labels[i] !== undefined ? contract.labels[i] : `class ${i}`);
  for (const t of top) t.label = label(t.index);
  const classIndex = out.target_class ? Number(out.target_class.data[0]) : top[0].index;
  const maps = {};
  for (const m of MAP_OUTPUTS) if (out[m]) maps[m] = Float32Array.from(out[m].data);
  return {
    classIndex,
    label: label(classIndex),
    probability: probabilities[classIndex],
    top,
    maps,
    height: contract.preprocess.height,
    width: contract.preprocess.width,
  };
}

// --------------------------------------------------------------------------- drawing

/** The jet colour map (blue - cyan - yellow - red) of a value in [0, 1], as [r, g, b]. */
export function jet(v) {
  const x = Math.min(1, Math.max(0, v));
  const ch = (c) => Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * x - c))));
  return [ch(3), ch(2), ch(1)];
}

/** RGBA of the map coloured with `jet` (height * width * 4 bytes, opaque). */
export function colorize(map, width, height) {
  const rgba = new Uint8ClampedArray(width * height * 4);
  for (let p = 0; p < width * height; p++) {
    const [r, g, b] = jet(map[p]);
    rgba[4 * p] = r;
    rgba[4 * p + 1] = g;
    rgba[4 * p + 2] = b;
    rgba[4 * p + 3] = 255;
  }
  return rgba;
}

/** The photo (RGBA at the map's size) with the coloured map laid over at `alpha`. */
export function blend(rgba, map, width, height, alpha) {
  const colored = colorize(map, width, height);
  const out = new Uint8ClampedArray(width * height * 4);
  for (let i = 0; i < out.length; i += 4) {
    for (let c = 0; c < 3; c++) out[i + c] = Math.round((1 - alpha) * rgba[i + c] + alpha * colored[i + c]);
    out[i + 3] = 255;
  }
  return out;
}
