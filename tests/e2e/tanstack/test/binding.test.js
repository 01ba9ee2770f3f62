// Binding and AI Gateway binding modes: the scenarios run inside worker/ (wrangler dev --local,
// env.AI proxied to Ember; run.sh starts it and sets WORKER_URL); this file calls its routes and
// applies the same checks as the REST modes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { scenarios } from "../scenarios.js";
import { checks, KNOWN, WAV } from "./checks.js";
import { gatewayLogCount } from "./gateway-log.js";

const WORKER_URL = process.env.WORKER_URL;
const CHAT = ["text", "stream", "tool", "structured"];

const MODES = {
  binding: Object.keys(scenarios), // { binding: env.AI }
  "gateway-binding": Object.keys(scenarios), // { binding: env.AI.gateway("default") }
  "gateway-option": CHAT, // { binding: env.AI, gateway: "default" }: the chat adapter's option
};

async function callWorker(mode, name) {
  if (!WORKER_URL) throw new Error("WORKER_URL is not set (run.sh starts the Worker and sets it)");
  const body = name === "transcription" ? WAV : undefined;
  const res = await fetch(`${WORKER_URL}/${mode}/${name}`, { method: "POST", body });
  const text = await res.text();
  if (!res.ok) throw new Error(`Worker answered ${res.status}: ${text.slice(0, 2000)}`);
  return JSON.parse(text);
}

for (const [mode, names] of Object.entries(MODES)) {
  for (const name of names) {
    const todo = KNOWN[mode]?.[name];
    test(`${mode}: ${name}`, { timeout: 300_000, todo }, async () => {
      const gateway = mode !== "binding";
      const logged = gateway && (await gatewayLogCount());
      checks[name](await callWorker(mode, name));
      if (gateway) assert.ok((await gatewayLogCount()) > logged, "AI Gateway 'default' logged nothing");
    });
  }
}
