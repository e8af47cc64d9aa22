// Drives Debian's Chromium with playwright-core for tests/browser: one JSON command per line on
// stdin, one JSON reply per line on stdout. Page console output goes to stderr.
//
//   {"id": 1, "cmd": "open", "page": "alice", "url": "http://..."}   new context + page
//   {"id": 2, "cmd": "eval", "page": "alice", "js": "lk.connect(...)"} awaited, JSON result
//   {"id": 3, "cmd": "reload", "page": "alice"}
//   {"id": 4, "cmd": "close", "page": "alice"}
//
// The browser's flags come from argv: the fake capture files first, then extra flags.
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const [audioFile, videoFile, ...extraFlags] = process.argv.slice(2);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    // Plain 127.0.0.1 host candidates inside the test namespace, not mDNS names.
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    `--use-file-for-fake-audio-capture=${audioFile}`,
    `--use-file-for-fake-video-capture=${videoFile}`,
    "--autoplay-policy=no-user-gesture-required",
    ...extraFlags,
  ],
});

const pages = new Map();

async function open(name, url) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.on("console", (msg) => process.stderr.write(`[${name}] ${msg.type()}: ${msg.text()}\n`));
  page.on("pageerror", (err) => process.stderr.write(`[${name}] pageerror: ${err}\n`));
  await page.goto(url);
  await page.waitForFunction(() => window.lk !== undefined);
  pages.set(name, page);
  return null;
}

function page(name) {
  const found = pages.get(name);
  if (!found) throw new Error(`no page ${name}`);
  return found;
}

async function run(message) {
  switch (message.cmd) {
    case "open":
      return open(message.page, message.url);
    case "eval":
      return page(message.page).evaluate(message.js);
    case "reload": {
      const target = page(message.page);
      await target.reload();
      await target.waitForFunction(() => window.lk !== undefined);
      return null;
    }
    case "close": {
      const target = page(message.page);
      pages.delete(message.page);
      await target.context().close();
      return null;
    }
    default:
      throw new Error(`unknown command ${message.cmd}`);
  }
}

const reply = (object) => process.stdout.write(`${JSON.stringify(object)}\n`);
reply({ id: 0, result: "ready" });

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const message = JSON.parse(line);
  // Commands run concurrently: a test may wait on one page while driving another.
  run(message).then(
    (result) => reply({ id: message.id, result: result ?? null }),
    (error) => reply({ id: message.id, error: String(error && error.stack ? error.stack : error) }),
  );
}
await browser.close();
