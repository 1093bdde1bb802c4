// Drive the page in headless Chromium (playwright-core, a browser already installed: no
// download) and write what it shows: class, top-5, every map, and a screenshot.
//
//   node test/drive.mjs --url http://127.0.0.1:8000/ --out result.json --screenshot page.png \
//        [--canvas canvas.png] [--chromium /usr/bin/chromium] [--method gradcam] [--timeout 90]
//        [--upload-model x.onnx] [--upload-image photo.png]    (then through the page's file inputs)
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    out: { type: "string" },
    screenshot: { type: "string" },
    canvas: { type: "string" },
    "upload-model": { type: "string" },
    "upload-image": { type: "string" },
    chromium: { type: "string", default: process.env.CHROMIUM ?? "/usr/bin/chromium" },
    method: { type: "string", default: "gradcam" },
    timeout: { type: "string", default: "90" },
  },
});
if (!args.url || !args.out) {
  console.error("usage: node test/drive.mjs --url URL --out result.json [--screenshot page.png]");
  process.exit(2);
}
const timeout = 1000 * Number(args.timeout);
const watchdog = setTimeout(() => {
  console.error(`gave up after ${args.timeout} s`);
  process.exit(3);
}, timeout + 30_000);

// Headless, no remote-debugging port (playwright talks over a pipe); --no-sandbox because
// CI containers run as root, where Chromium's sandbox refuses to start.
const browser = await chromium.launch({ executablePath: args.chromium, headless: true, args: ["--no-sandbox"], timeout });
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 720 } });
  const logs = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  const url = new URL(args.url);
  url.searchParams.set("method", args.method);
  await page.goto(url.href, { timeout });
  await page.waitForFunction(() => ["done", "error"].includes(document.body.dataset.state), null, { timeout });
  const state = await page.evaluate(() => document.body.dataset.state);
  const status = await page.locator("#status").textContent();
  if (state !== "done") {
    console.error(`the page failed: ${status}\n${logs.join("\n")}`);
    process.exitCode = 1;
  } else {
    const result = await page.evaluate(() => {
      const r = window.onnxExplain.result;
      const maps = Object.fromEntries(Object.entries(r.maps).map(([k, v]) => [k, Array.from(v)]));
      return { ...r, maps, method: window.onnxExplain.method };
    });
    result.status = status;
    result.top5 = await page.locator("#top li").allTextContents();
    // then the page's file inputs: a model, then a photo, each giving a new call
    for (const [input, file] of [["#model-file", args["upload-model"]], ["#image-file", args["upload-image"]]]) {
      if (!file) continue;
      const before = await page.evaluate(() => window.onnxExplain.runs);
      await page.setInputFiles(input, file);
      await page.waitForFunction((n) => document.body.dataset.state === "error" || window.onnxExplain.runs > n, before, { timeout });
      const r = await page.evaluate(() => ({ state: document.body.dataset.state, status: document.getElementById("status").textContent,
        classIndex: window.onnxExplain.result.classIndex, top: window.onnxExplain.result.top.map((t) => t.index) }));
      (result.uploads ??= []).push({ input, ...r });
    }
    writeFileSync(args.out, JSON.stringify(result));
    if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
    if (args.canvas) {  // the canvas's own pixels (no border, no page scaling)
      const url = await page.evaluate(() => document.getElementById("view").toDataURL("image/png"));
      writeFileSync(args.canvas, Buffer.from(url.slice(url.indexOf(",") + 1), "base64"));
    }
  }
} finally {
  await browser.close();
  clearTimeout(watchdog);
}
