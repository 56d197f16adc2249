// Loads a receiver's player page (`--serve`) in headless Chromium (Debian's
// package, driven by playwright-core) and checks that it plays: the video's
// currentTime advances and no media error is raised.
//
//   node scripts/browser/player.mjs http://HOST:PORT/ [SECONDS]
//
// Once playing it prints {"event":"playing",...} and waits for one line on
// stdin (the test kills a relay meanwhile); then the video must play on for
// SECONDS more (default 6) of media. Prints one final JSON line (played,
// stalls, reconnects, mediaErrors, type) and exits 0, or prints why and
// exits 1. Without a stdin line (stdin closed) it goes on at once.
// CHROMIUM overrides the browser's path (/usr/bin/chromium).

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const [url, secondsArg] = process.argv.slice(2);
if (!url) {
  console.error("usage: player.mjs http://HOST:PORT/ [SECONDS]");
  process.exit(2);
}
const more = Number(secondsArg ?? 6);
const TIMEOUT = 45_000;

const lines = createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => {
  lines.once("line", resolve);
  lines.once("close", resolve);
});

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
      "--autoplay-policy=no-user-gesture-required",
    ],
    viewport: { width: 640, height: 400 },
    timeout: TIMEOUT,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") errors.push(`console: ${m.text()}`); });
  const resp = await page.goto(url, { timeout: TIMEOUT });
  if (resp.status() !== 200) throw new Error(`the page answered HTTP ${resp.status()}`);

  const state = () => page.evaluate(() => {
    const v = document.querySelector("video");
    return {
      currentTime: v.currentTime,
      error: v.error ? `${v.error.code} ${v.error.message}` : null,
      ...window.miostream,
      stats: document.getElementById("stats").textContent,
    };
  });
  // Plays: currentTime advances by `need` seconds of media within the
  // timeout, with no media error on the way.
  const plays = async (need, what) => {
    const start = await state();
    const deadline = Date.now() + TIMEOUT;
    let s = start;
    let from = start.currentTime;
    let played = 0;
    for (;;) {
      if (s.error || s.mediaErrors > 0) throw new Error(`media error ${what}: ${JSON.stringify(s)}`);
      // A reconnect or a catch-up may move the play head: count progress only.
      if (s.currentTime > from) played += Math.min(s.currentTime - from, 1);
      from = s.currentTime;
      if (played >= need) return { played, ...s };
      if (Date.now() > deadline) throw new Error(`did not play ${need} s ${what}: ${JSON.stringify(s)}`);
      await page.waitForTimeout(250);
      s = await state();
    }
  };
  const first = await plays(2, "at first");
  console.log(JSON.stringify({ event: "playing", ...first }));
  await nextLine();
  const before = await state();
  const after = await plays(more, "after the go-ahead");
  if (errors.length > 0) throw new Error(errors.join("\n"));
  console.log(JSON.stringify({
    event: "done", played: after.played, stalls: after.stalls, reconnects: after.reconnects,
    reconnectsAfter: after.reconnects - before.reconnects, catchups: after.catchups,
    mediaErrors: after.mediaErrors, type: after.type, stats: after.stats,
  }));
} catch (e) {
  failed = true;
  console.error(`player check failed: ${e.message}`);
} finally {
  lines.close();
  if (context) await context.close().catch(() => {});
  await rm(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
