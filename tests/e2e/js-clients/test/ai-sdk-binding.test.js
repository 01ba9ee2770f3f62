// Vercel AI SDK + workers-ai-provider in binding mode, and LangChain's CloudflareWorkersAIEmbeddings,
// inside a Worker (../worker) under `wrangler dev --local` (wrangler 4.44.0). wrangler 4.44 sends
// every env.AI call to {CLOUDFLARE_API_BASE_URL}/accounts/{CLOUDFLARE_ACCOUNT_ID}/ai/run/proxy, so
// setting CLOUDFLARE_API_BASE_URL to Ember is the only change (as in tests/e2e/run_worker_test.sh).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  ACCOUNT_ID, EMBED_TEXTS, EMBER_URL, PROFILE_PROMPT, SPEECH_WAV, TIMEOUT, TOKEN, TOOL_PROMPT, TOOL_SYSTEM,
  assertEmbedOrder, assertVector, looksLikeMp3, pngInfo, profileSchema,
} from "./common.js";

const WORKER_DIR = fileURLToPath(new URL("../worker/", import.meta.url));
const STARTUP_TIMEOUT = Number(process.env.E2E_STARTUP_TIMEOUT || 120) * 1000;
const LOG = join(mkdtempSync(join(tmpdir(), "ember-js-clients-")), "wrangler.log");

let wrangler;
let base;
let failures = 0;

function freePort() {
  return new Promise((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

before(async () => {
  assert.ok(existsSync(join(WORKER_DIR, "node_modules/.bin/wrangler")), "worker/node_modules missing: run npm ci there (run.sh does)");
  // Seed miniflare's Request.cf cache so wrangler does not fetch it from the network at startup.
  const cf = join(WORKER_DIR, "node_modules/.mf/cf.json");
  if (!existsSync(cf)) {
    mkdirSync(join(WORKER_DIR, "node_modules/.mf"), { recursive: true });
    writeFileSync(cf, '{"colo":"DFW","country":"US","asn":395747,"httpProtocol":"HTTP/1.1","clientTcpRtt":0}');
  }
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  const log = openSync(LOG, "w");
  wrangler = spawn(
    join(WORKER_DIR, "node_modules/.bin/wrangler"),
    ["dev", "--local", "--ip", "127.0.0.1", "--port", String(port), "--show-interactive-dev-session=false"],
    {
      cwd: WORKER_DIR,
      detached: true, // own process group: node + both workerd processes are killed together
      stdio: ["ignore", log, log],
      env: {
        ...process.env,
        CLOUDFLARE_API_BASE_URL: `${EMBER_URL}/client/v4`,
        CLOUDFLARE_ACCOUNT_ID: ACCOUNT_ID,
        CLOUDFLARE_API_TOKEN: TOKEN,
        WRANGLER_SEND_METRICS: "false",
        CI: "true",
        NO_COLOR: "1",
        FORCE_COLOR: "0",
      },
    },
  );
  const deadline = Date.now() + STARTUP_TIMEOUT;
  while (Date.now() < deadline) {
    if (wrangler.exitCode !== null) break;
    try {
      if ((await (await fetch(base, { signal: AbortSignal.timeout(5000) })).text()) === "ok") return;
    } catch {}
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`wrangler dev did not answer on ${base}:\n${readFileSync(LOG, "utf8").slice(-4000)}`);
});

// Stops the whole process group (wrangler's node and both workerd): TERM, up to 5 s, then KILL.
after(async () => {
  if (wrangler) {
    const exited = new Promise((r) => (wrangler.exitCode !== null ? r() : wrangler.once("exit", r)));
    try { process.kill(-wrangler.pid, "SIGTERM"); } catch {}
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    try { process.kill(-wrangler.pid, "SIGKILL"); } catch {}
  }
  if (failures > 0) console.log(`----- wrangler log (${LOG}), last lines -----\n${readFileSync(LOG, "utf8").slice(-6000)}`);
});

// POST a JSON body to a Worker route; returns the JSON answer, or throws with the Worker's error.
async function call(path, body) {
  const res = await fetch(base + path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`${path}: HTTP ${res.status}: ${text.slice(0, 3000)}`);
  return JSON.parse(text);
}

// Wraps test() to count failures (to print the wrangler log in after()).
function bindingTest(name, fn) {
  test(name, { timeout: TIMEOUT }, async () => {
    try { await fn(); } catch (e) { failures++; throw e; }
  });
}

bindingTest("binding: generateText", async () => {
  const r = await call("/ai/generate-text", { prompt: "Say hello in one short sentence." });
  assert.ok(r.text.trim().length > 0, "empty text");
  assert.ok(["stop", "length"].includes(r.finishReason), `finishReason ${r.finishReason}`);
  assert.ok(r.usage.inputTokens > 0 && r.usage.outputTokens > 0, `usage ${JSON.stringify(r.usage)}`);
});

bindingTest("binding: streamText arrives in several chunks", async () => {
  const r = await call("/ai/stream-text", { prompt: "Count from one to ten in words, separated by commas." });
  assert.ok(r.chunks.length > 1, `only ${r.chunks.length} chunk(s): ${JSON.stringify(r)}`);
  assert.ok(r.text.trim().length > 0, "empty text");
  assert.equal(r.text, r.chunks.join(""));
  assert.ok(r.usage.outputTokens > 0, `usage ${JSON.stringify(r.usage)}`);
});

bindingTest("binding: tool call round trip (zod schema, stopWhen: isStepCount(2))", async () => {
  const r = await call("/ai/tools", { system: TOOL_SYSTEM, prompt: TOOL_PROMPT });
  const trace = JSON.stringify(r.steps);
  assert.equal(r.steps.length, 2, trace);
  assert.equal(r.steps[0].toolCalls[0]?.toolName, "add", trace);
  assert.ok(r.executed.length >= 1, "execute() did not run");
  const sum = r.executed[0].a + r.executed[0].b;
  assert.deepEqual(r.steps[0].toolResults[0].output, { sum });
  // The result went back to the model, which answered with it in text.
  assert.equal(r.steps[1].toolCalls.length, 0, trace);
  assert.ok(r.text.includes(String(sum)), `final text lacks ${sum}: ${trace}`);
});

bindingTest("binding: generateObject with a zod schema", async () => {
  const r = await call("/ai/generate-object", { prompt: PROFILE_PROMPT });
  assert.equal(r.valid, true, JSON.stringify(r.object));
  assert.deepEqual(profileSchema.parse(r.object), r.object);
});

bindingTest("binding: embedMany", async () => {
  const r = await call("/ai/embed-many", { values: EMBED_TEXTS });
  assert.equal(r.embeddings.length, EMBED_TEXTS.length);
  r.embeddings.forEach((v) => assertVector(v));
  assertEmbedOrder(r.embeddings);
});

bindingTest("binding: generateImage (tiny Stable Diffusion, 320x256 PNG)", async () => {
  const r = await call("/ai/generate-image", { prompt: "a lighthouse" });
  const info = pngInfo(Uint8Array.from(r.bytes));
  assert.deepEqual(info, { signature: true, width: 320, height: 256 }, JSON.stringify(r));
  assert.equal(r.mediaType, "image/png");
});

bindingTest("binding: transcribe (whisper-tiny-en)", async () => {
  const r = await call("/ai/transcribe", { audio: readFileSync(SPEECH_WAV).toString("base64") });
  assert.match(r.text, /lazy dog/i);
  assert.ok(r.segments.length > 0, "no segments");
});

bindingTest("binding: generateSpeech (aura-1 MP3)", async () => {
  const r = await call("/ai/speech", { text: "Hello from Ember." });
  // The route answers the first 4 bytes and the length.
  assert.ok(r.length > 100, `only ${r.length} bytes`);
  assert.ok(looksLikeMp3(r.bytes), `not MP3: first bytes ${r.bytes}`);
});

bindingTest("binding: rerank (bge-reranker-base)", async () => {
  const documents = ["Venus is very hot.", "Mars is called the Red Planet.", "Bananas are yellow."];
  const r = await call("/ai/rerank", { query: "Which planet is the Red Planet?", documents, topN: 2 });
  assert.equal(r.ranking.length, 2, JSON.stringify(r.ranking));
  assert.equal(r.ranking[0].originalIndex, 1, JSON.stringify(r.ranking));
});

bindingTest("binding: LangChain CloudflareWorkersAIEmbeddings (embedDocuments, embedQuery)", async () => {
  const r = await call("/langchain/embed", { values: EMBED_TEXTS, query: "Where is the cat?" });
  assert.equal(r.documents.length, EMBED_TEXTS.length);
  r.documents.forEach((v) => assertVector(v));
  assertEmbedOrder(r.documents);
  assertVector(r.query);
});
