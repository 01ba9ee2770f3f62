import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { plugins, ownBindings, probe, WRAPPER_SOURCE } from "../src/plugin.js";

delete process.env.EMBER_ADDRESS;
delete process.env.EMBER_TOKEN;

const plugin = plugins.ember;
const spec = { package: "wrangler-ember", name: "ember" };

// miniflare 4 hands the plugin the Worker's unsafe bindings that name it.
const mf4 = [
  { name: "AI", type: "ai", plugin: spec, options: { address: "127.0.0.1:9001" } },
  { name: "OTHER", type: "ai", plugin: { package: "x", name: "other" }, options: {} },
];
// miniflare 5 hands it the whole Worker options; unsafe bindings sit in config.env.
const mf5 = {
  config: {
    name: "w",
    env: {
      AI: { type: "unsafe:ai", dev: { plugin: spec, options: { address: "127.0.0.1:9001", token: "tok" } } },
      KV: { type: "kv", id: "x" },
      ELSE: { type: "unsafe:ai", dev: { plugin: { package: "x", name: "other" } } },
    },
  },
};

test("finds its bindings in both miniflare option shapes, ignoring others", () => {
  assert.deepEqual(ownBindings(mf4), [{ name: "AI", options: { address: "127.0.0.1:9001", token: undefined } }]);
  assert.deepEqual(ownBindings(mf5), [{ name: "AI", options: { address: "127.0.0.1:9001", token: "tok" } }]);
  assert.deepEqual(ownBindings(undefined), []);
  assert.deepEqual(ownBindings({ config: { name: "w" } }), []);
  assert.deepEqual(ownBindings([{ name: "AI", plugin: spec }]), [{ name: "AI", options: { address: "127.0.0.1:8787", token: undefined } }]);
});

test("a bad option fails with the binding's name", () => {
  assert.throws(() => ownBindings([{ name: "AI", plugin: spec, options: { address: "nope" } }]), /binding AI.*"address"/);
});

test("getBindings wraps cloudflare-internal:ai-api around a per-Worker fetcher service", () => {
  const expected = [
    {
      name: "AI",
      wrapped: {
        moduleName: "cloudflare-internal:ai-api",
        innerBindings: [{ name: "fetcher", service: { name: "wrangler-ember:2:AI" } }],
      },
    },
  ];
  assert.deepEqual(plugin.getBindings(mf4, 2), expected); // miniflare 4: (options, workerIndex)
  assert.deepEqual(plugin.getBindings(mf5, {}, 2), expected); // miniflare 5: (options, shared, workerIndex)
  assert.deepEqual(plugin.getBindings(undefined, 0), []);
  assert.deepEqual(plugin.getNodeBindings(mf5), {});
});

test("getServices: the wrapper Worker and Ember as an external service, the token injected", async () => {
  const warnings = [];
  const log = { warn: (m) => warnings.push(m) };
  const [wrapper, ember] = await plugin.getServices({ options: mf5, workerIndex: 1, log });
  assert.equal(wrapper.name, "wrangler-ember:1:AI");
  assert.deepEqual(wrapper.worker.bindings, [
    { name: "EMBER", service: { name: "wrangler-ember:1:AI:ember" } },
    { name: "ADDRESS", json: '"127.0.0.1:9001"' },
  ]);
  assert.equal(wrapper.worker.modules[0].esModule, WRAPPER_SOURCE);
  assert.deepEqual(ember, {
    name: "wrangler-ember:1:AI:ember",
    external: { address: "127.0.0.1:9001", http: { injectRequestHeaders: [{ name: "Authorization", value: "Bearer tok" }] } },
  });
  const [, plain] = await plugin.getServices({ options: mf4, workerIndex: 0, log });
  assert.deepEqual(plain.external, { address: "127.0.0.1:9001", http: {} });
  assert.deepEqual(await plugin.getServices({ options: undefined, workerIndex: 0, log }), []);
});

test("the wrapper Worker passes Ember's answer through, and names the address when it cannot connect", async () => {
  const { default: wrapper } = await import("data:text/javascript," + encodeURIComponent(WRAPPER_SOURCE));
  const answer = new Response("data: [DONE]\n\n", { headers: { "content-type": "text/event-stream" } });
  const request = new Request("https://workers-binding.ai/run?version=3", { method: "POST", body: "{}" });
  let seen;
  const ok = await wrapper.fetch(request, { ADDRESS: "127.0.0.1:9", EMBER: { fetch: async (r) => ((seen = r), answer) } });
  assert.equal(ok, answer); // the very same Response: nothing buffered or rewritten
  assert.equal(seen, request);
  const failed = await wrapper.fetch(request, {
    ADDRESS: "127.0.0.1:9",
    EMBER: { fetch: async () => { throw new Error("Network connection lost."); } },
  });
  assert.equal(failed.status, 502);
  const body = await failed.json();
  // The shapes the binding turns into errors: run() reads name/internalCode/description,
  // models() reads errors[0].message.
  assert.equal(body.name, "EmberUnreachable");
  assert.ok(body.internalCode > 0);
  assert.match(body.description, /^wrangler-ember: nothing answers at 127\.0\.0\.1:9 \(Network connection lost\.\)/);
  assert.equal(body.errors[0].message, body.description);
});

test("a closed port is reported by name at startup; an open one is not", async () => {
  const server = net.createServer().listen(0, "127.0.0.1");
  await new Promise((r) => server.once("listening", r));
  const open = `127.0.0.1:${server.address().port}`;
  const closedServer = net.createServer().listen(0, "127.0.0.1");
  await new Promise((r) => closedServer.once("listening", r));
  const closed = `127.0.0.1:${closedServer.address().port}`;
  await new Promise((r) => closedServer.close(r));
  try {
    assert.equal(await probe(open), true);
    assert.equal(await probe(closed), false);
    const warnings = [];
    const options = [
      { name: "A", plugin: spec, options: { address: open } },
      { name: "B", plugin: spec, options: { address: closed } },
    ];
    await plugin.getServices({ options, workerIndex: 0, log: { warn: (m) => warnings.push(m) } });
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], new RegExp(`^wrangler-ember: nothing answers at ${closed}`));
  } finally {
    server.close();
  }
});
