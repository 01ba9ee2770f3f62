// REST and AI Gateway REST modes of @cloudflare/tanstack-ai, run in Node against EMBER_URL.
// ./redirect.js swaps the package's hard-coded Cloudflare hosts for EMBER_URL (the package has no
// base-URL or fetch option in these modes) and records every URL the package asked for.
import { test } from "node:test";
import assert from "node:assert/strict";
import { failedSince, sent } from "./redirect.js";
import { CHAT_MODEL, scenarios } from "../scenarios.js";
import { checks, KNOWN, WAV } from "./checks.js";
import { gatewayLogCount } from "./gateway-log.js";

const accountId = process.env.EMBER_ACCOUNT_ID || "local";
const token = process.env.EMBER_TOKEN || "dummy";

const MODES = {
  // createWorkersAiChat(model, {accountId, apiKey}): api.cloudflare.com/client/v4/accounts/{id}/ai/...
  rest: {
    config: { accountId, apiKey: token },
    gateway: false,
    prefix: `https://api.cloudflare.com/client/v4/accounts/${accountId}/ai/`,
  },
  // {accountId, gatewayId, apiKey, cfApiKey}: every call is one universal request posted to
  // gateway.ai.cloudflare.com/v1/{id}/{gateway}. Gateway "default" exists on first use in dev mode.
  "gateway-rest": {
    config: { accountId, gatewayId: "default", apiKey: token, cfApiKey: token },
    gateway: true,
    prefix: `https://gateway.ai.cloudflare.com/v1/${accountId}/default`,
  },
};

for (const [mode, { config, gateway, prefix }] of Object.entries(MODES)) {
  for (const name of Object.keys(scenarios)) {
    const todo = KNOWN[mode]?.[name];
    test(`${mode}: ${name}`, { timeout: 300_000, todo }, async () => {
      const first = sent.length;
      const logged = gateway && (await gatewayLogCount());
      const input = name === "transcription" ? new Uint8Array(WAV).buffer : undefined; // an ArrayBuffer
      try {
        const result = await scenarios[name](config, input, CHAT_MODEL[mode]);
        // The package used this mode's own URL (so the test proves the mode, not another path).
        const urls = sent.slice(first).map((s) => s.url);
        assert.ok(urls.length > 0, "the package sent no request");
        for (const url of urls) assert.ok(url.startsWith(prefix), `request to ${url}, expected ${prefix}...`);
        checks[name](result);
        if (gateway) assert.ok((await gatewayLogCount()) > logged, "AI Gateway 'default' logged nothing");
      } catch (err) {
        // Add the requests Ember refused, with its answers, to the failure.
        const failed = failedSince(first);
        if (failed.length) err.message += `\nrequests that failed:\n${failed.join("\n")}`;
        throw err;
      }
    });
  }
}
