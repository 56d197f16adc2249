// Loads the supervisor's monitor dashboard in headless Chromium (Debian's
// package, driven by playwright-core) and checks that the topology of a
// running stream appears: every receiver the API lists is a node of the
// stream's SVG graph, edges are drawn, the QoS table has a row per receiver,
// and the page raised no error (a CSP violation would be one).
//
//   node scripts/browser/dashboard.mjs https://HOST:PORT/ TOKEN shot.png [RECEIVERS]
//
// Prints one JSON line (stream, peers, edges) and exits 0, or prints why
// and exits 1. CHROMIUM overrides the browser's path (/usr/bin/chromium).

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, token, screenshot, expectArg] = process.argv.slice(2);
if (!url || !token || !screenshot) {
  console.error("usage: dashboard.mjs https://HOST:PORT/ TOKEN SCREENSHOT.png [RECEIVERS]");
  process.exit(2);
}
const expected = Number(expectArg ?? 1);
const TIMEOUT = 30_000;
const base = url.endsWith("/") ? url : `${url}/`;

const profile = await mkdtemp(join(tmpdir(), "miostream-chromium-"));
let context;
let failed = false;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    // As root in a container: no sandbox; nothing that phones home.
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
    // The supervisor's certificate comes from its own CA.
    ignoreHTTPSErrors: true,
    viewport: { width: 1000, height: 720 },
    timeout: TIMEOUT,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") errors.push(`console: ${m.text()}`); });

  // Unauthenticated: the login form, nothing else.
  const first = await page.goto(base, { timeout: TIMEOUT });
  if (first.status() !== 401 || (await page.locator("form input[name=token]").count()) !== 1) {
    throw new Error(`without the token the page should be the login form (got HTTP ${first.status()})`);
  }
  // The login link sets the session cookie and redirects to the dashboard.
  const resp = await page.goto(`${base}login?token=${encodeURIComponent(token)}`, { timeout: TIMEOUT });
  if (resp.status() !== 200 || new URL(page.url()).pathname !== "/") {
    throw new Error(`login did not land on the dashboard (HTTP ${resp.status()} at ${page.url()})`);
  }
  // The login form's 401 was expected; from here on every error counts.
  errors.length = 0;

  // Wait until the graph shows every receiver that the API lists (the
  // overlay may still be settling: poll on what both show).
  const deadline = Date.now() + TIMEOUT;
  let seen;
  for (;;) {
    seen = await page.evaluate(async () => {
      const r = await fetch("/api/state", { credentials: "same-origin" });
      const state = await r.json();
      const stream = state.streams[0];
      if (!stream) return { api: [], dom: [] };
      const svg = [...document.querySelectorAll("svg.topology")].find((s) => s.dataset.stream === stream.name);
      const dom = svg ? [...svg.querySelectorAll("g.node.receiver")].map((g) => g.dataset.peer) : [];
      const rows = [...document.querySelectorAll("table.qos")]
        .filter((t) => t.dataset.stream === stream.name)
        .flatMap((t) => [...t.querySelectorAll("tbody tr")]).length;
      const edges = svg ? svg.querySelectorAll("line.edge.primary, line.edge.mesh").length : 0;
      const backups = svg ? svg.querySelectorAll("line.edge.backup").length : 0;
      const root = svg ? svg.querySelectorAll("g.node.broadcaster").length : 0;
      const section = [...document.querySelectorAll("section.stream")].find((s) => s.dataset.stream === stream.name);
      const totals = section?.querySelector(".totals")?.dataset ?? {};
      const addresses = [...document.querySelectorAll("table.qos td.address")].map((td) => td.textContent);
      const controls = !document.getElementById("inject").hidden;
      return {
        stream: stream.name, api: stream.nodes.map((n) => n.peer).sort(), dom: dom.sort(), rows, edges, backups, root,
        viewers: Number(totals.viewers ?? -1), apiAddresses: stream.nodes.map((n) => n.address ?? "–"), addresses,
        controls, labControls: state.lab_controls, goodputBps: Number(totals.goodputBps ?? 0), offload: totals.offload ?? "",
      };
    });
    const same = seen.api.length >= expected && JSON.stringify(seen.api) === JSON.stringify(seen.dom);
    // Per-stream totals, every receiver's address, and the failure controls
    // exactly when lab_controls is on.
    const shown = seen.viewers === seen.api.length
      && JSON.stringify(seen.addresses.slice().sort()) === JSON.stringify(seen.apiAddresses.slice().sort())
      && seen.controls === seen.labControls;
    if (same && shown && seen.rows === seen.api.length && seen.edges >= seen.api.length && seen.root === 1) break;
    if (Date.now() > deadline) {
      throw new Error(`the graph never showed the stream's ${expected} receivers: ${JSON.stringify(seen)}`);
    }
    await page.waitForTimeout(250);
  }
  // Let one more poll render the QoS colours, then keep a picture.
  await page.waitForFunction(
    () => [...document.querySelectorAll("g.node.receiver")].every((g) => g.dataset.state !== "unknown"),
    null,
    { timeout: TIMEOUT },
  );
  await page.screenshot({ path: screenshot, fullPage: true });
  if (errors.length > 0) throw new Error(errors.join("\n"));
  console.log(JSON.stringify({
    stream: seen.stream, peers: seen.dom, edges: seen.edges, backups: seen.backups,
    viewers: seen.viewers, addresses: seen.addresses, controls: seen.controls, goodput_bps: seen.goodputBps, offload: seen.offload,
  }));
} catch (e) {
  failed = true;
  console.error(`dashboard check failed: ${e.message}`);
} finally {
  if (context) await context.close().catch(() => {});
  await rm(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
