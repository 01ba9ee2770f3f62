// Shared settings and helpers for the JS client suites.
//
// Env: EMBER_URL (required, e.g. http://127.0.0.1:8787), EMBER_ACCOUNT_ID (default "local"),
//      EMBER_TOKEN (default "dummy").
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

if (!process.env.EMBER_URL) throw new Error("EMBER_URL is required (e.g. http://127.0.0.1:8787)");

export const EMBER_URL = process.env.EMBER_URL.replace(/\/+$/, "");
export const ACCOUNT_ID = process.env.EMBER_ACCOUNT_ID || "local";
export const TOKEN = process.env.EMBER_TOKEN || "dummy";

export { CHAT_COMPLETIONS_MODEL, CHAT_MODEL, EMBED_MODEL, TOOL_MODEL, addTool, profileSchema } from "../shared.js";
export const TOOL_SYSTEM =
  "You are a helpful assistant. Call a tool only when you do not yet have its result; " +
  "once a tool result is available, answer the user in plain text.";
export const TOOL_PROMPT = "What is 17 + 25? Use the add tool.";
export const EMBED_DIM = 768;

// Per-test timeout: a debug build of Ember on a CPU can be slow.
export const TIMEOUT = Number(process.env.E2E_TIMEOUT || 300) * 1000;

// A short English recording ("... the lazy dog ...") from Ember's whisper fixtures.
export const SPEECH_WAV = fileURLToPath(
  new URL("../../../../crates/ember-engines/tests/fixtures/whisper/short.wav", import.meta.url),
);

/**
 * A `fetch` for workers-ai-provider's documented `fetch` option (REST mode): the provider builds
 * `https://api.cloudflare.com/client/v4/accounts/{id}/ai/run/{model}`; this sends it to Ember instead
 * and records every request (url, parsed JSON body, status) in `calls` so tests can inspect them.
 */
export function emberFetch() {
  const calls = [];
  const fn = async (input, init = {}) => {
    const url = String(input instanceof Request ? input.url : input);
    // Anything else (e.g. the AI Gateway host) would mean the provider bypassed the rewrite.
    assert.ok(url.startsWith("https://api.cloudflare.com/"), `unexpected URL from the provider: ${url}`);
    const target = EMBER_URL + url.slice("https://api.cloudflare.com".length);
    let body;
    try { body = JSON.parse(init.body); } catch { body = init.body; }
    const call = { url: target, body, status: undefined };
    calls.push(call);
    const response = await fetch(target, init);
    call.status = response.status;
    return response;
  };
  fn.calls = calls;
  return fn;
}

/** Fails unless `v` is an embedding of `dim` finite numbers, not all zero. */
export function assertVector(v, dim = EMBED_DIM) {
  assert.ok(Array.isArray(v), `embedding is not an array: ${typeof v}`);
  assert.equal(v.length, dim, "embedding dimension");
  assert.ok(v.every((x) => typeof x === "number" && Number.isFinite(x)), "non-finite entries");
  assert.ok(v.some((x) => x !== 0), "all-zero vector");
}

/** Cosine similarity of two equal-length vectors. */
export function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return dot / Math.sqrt(na * nb);
}

// Three texts for the embedding tests: the first two say the same thing, the third does not, so a
// correct model puts 0 nearer to 1 than to 2 (and a server that mixed up the order would not).
export const EMBED_TEXTS = [
  "The cat sat on the mat.",
  "A kitten is sitting on a rug.",
  "Quarterly revenue grew by eight percent.",
];

/** Fails unless the vectors for EMBED_TEXTS are ordered as the texts are (see above). */
export function assertEmbedOrder(vectors) {
  const near = cosine(vectors[0], vectors[1]);
  const far = cosine(vectors[0], vectors[2]);
  assert.ok(near > far, `expected sim(cat, kitten)=${near} > sim(cat, revenue)=${far}`);
}

/** The PNG signature and the size in its IHDR chunk. */
export function pngInfo(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    signature: [...bytes.slice(0, 8)].join(",") === "137,80,78,71,13,10,26,10",
    width: bytes.length >= 24 ? view.getUint32(16) : 0,
    height: bytes.length >= 24 ? view.getUint32(20) : 0,
  };
}

/** True when the bytes start like an MP3 file: an ID3 tag or an MPEG audio frame sync. */
export function looksLikeMp3(bytes) {
  const id3 = bytes[0] === 0x49 && bytes[1] === 0x44 && bytes[2] === 0x33;
  const sync = bytes[0] === 0xff && (bytes[1] & 0xe0) === 0xe0;
  return id3 || sync;
}

// The zod schema and prompt used by every structured-output test.
export const PROFILE_PROMPT =
  "Make a profile for a person named Alice who is 30 years old and whose hobbies are chess and hiking.";
