// A miniflare "external plugin" that gives a Worker an `env.AI` binding served by Ember.
//
// wrangler >= 4.45 always sends the `ai` binding to Cloudflare. An `unsafe` binding with
// `dev.plugin` makes miniflare load this module instead (require.resolve("wrangler-ember"), then
// `plugins[name]`). We bind workerd's own AI wrapper module, `cloudflare-internal:ai-api`, exactly
// as miniflare's built-in AI plugin does, but point its inner `fetcher` (through a pass-through
// Worker, see WRAPPER_SOURCE) at an external HTTP service: Ember. The Worker's env.AI calls then
// arrive as the native binding requests (POST /run?version=3 with cf-consn-model-id,
// GET /ai-api/models/search, /ai-gateway/...), which Ember serves at its root.

import net from "node:net";
import { PLUGIN_NAME, parseOptions } from "./options.js";

/**
 * This plugin's bindings of one Worker, as [{name, options}], from either option shape:
 * - miniflare 4 (wrangler 4.x up to 4.86 at least): an array of the Worker's unsafe bindings naming this
 *   plugin, each {name, type, plugin: {package, name}, options} (undefined when there are none);
 * - miniflare 5: the whole Worker options, whose `config.env[name]` is
 *   {type: "unsafe:<type>", dev: {plugin: {package, name}, options}}.
 */
export function ownBindings(workerOptions) {
  if (Array.isArray(workerOptions)) {
    return workerOptions
      .filter((b) => b && b.plugin?.name === PLUGIN_NAME)
      .map((b) => ({ name: b.name, options: parseOptions(b.options ?? {}, `wrangler-ember (binding ${b.name})`) }));
  }
  const env = workerOptions?.config?.env;
  if (env && typeof env === "object") {
    return Object.entries(env)
      .filter(([, b]) => typeof b?.type === "string" && b.type.startsWith("unsafe:") && b.dev?.plugin?.name === PLUGIN_NAME)
      .map(([name, b]) => ({ name, options: parseOptions(b.dev.options ?? {}, `wrangler-ember (binding ${name})`) }));
  }
  return [];
}

/** workerd service names of one binding: the wrapper Worker and Ember itself. The Worker index
 * and binding name keep them unique when several Workers or bindings are configured. */
export function serviceNames(workerIndex, bindingName) {
  const base = `wrangler-ember:${workerIndex ?? 0}:${bindingName}`;
  return { wrapper: base, ember: `${base}:ember` };
}

/** The workerd binding: the AI wrapper module, its `fetcher` being our wrapper Worker. */
export function aiBinding(workerIndex, binding) {
  return {
    name: binding.name,
    wrapped: {
      moduleName: "cloudflare-internal:ai-api",
      innerBindings: [{ name: "fetcher", service: { name: serviceNames(workerIndex, binding.name).wrapper } }],
    },
  };
}

// The fetcher's requests pass through this tiny Worker on their way to Ember, unchanged (bodies
// and streams included), for one reason: when nothing listens at the address, workerd's external
// service only throws "Network connection lost.", which names neither Ember nor the address. The
// binding turns a non-2xx JSON {internalCode, name, description} into
// `throw <name>: <internalCode>: <description>` for run(), and AI.models() throws
// `errors[0].message`, so the Worker's env.AI call says what is wrong.
export const WRAPPER_SOURCE = `
export default {
  async fetch(request, env) {
    try {
      return await env.EMBER.fetch(request);
    } catch (error) {
      const description = "wrangler-ember: nothing answers at " + env.ADDRESS +
        " (" + ((error && error.message) || error) + "); start Ember there (ember serve --listen " +
        env.ADDRESS + ") or set \\"address\\" in the AI binding's dev.options";
      return Response.json(
        { internalCode: 1, name: "EmberUnreachable", message: description, description,
          errors: [{ code: 1, message: description }] },
        { status: 502 },
      );
    }
  },
};
`;

/**
 * The workerd services of one binding: the wrapper Worker above and Ember as an external plain
 * HTTP service. The binding sends no credentials of its own, so a token (needed once Ember has
 * accounts) is added by workerd to every request it forwards to Ember.
 */
export function emberServices(workerIndex, binding) {
  const { address, token } = binding.options;
  const names = serviceNames(workerIndex, binding.name);
  const http = token ? { injectRequestHeaders: [{ name: "Authorization", value: `Bearer ${token}` }] } : {};
  return [
    {
      name: names.wrapper,
      worker: {
        compatibilityDate: "2025-01-01",
        modules: [{ name: "wrangler-ember.js", esModule: WRAPPER_SOURCE }],
        bindings: [
          { name: "EMBER", service: { name: names.ember } },
          { name: "ADDRESS", json: JSON.stringify(address) },
        ],
      },
    },
    { name: names.ember, external: { address, http } },
  ];
}

/** Resolves true when something accepts a TCP connection at host:port within `timeoutMs`. */
export function probe(address, timeoutMs = 1000) {
  const i = address.lastIndexOf(":");
  const host = address.slice(0, i).replace(/^\[(.*)\]$/, "$1");
  const port = Number(address.slice(i + 1));
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (ok) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

/** The message logged, and worth grepping for, when Ember is not there. */
export function unreachableMessage(address) {
  return (
    `wrangler-ember: nothing answers at ${address}; env.AI calls will throw EmberUnreachable until Ember ` +
    `runs there (ember serve --listen ${address}) or "address" in the AI binding's dev.options points at it.`
  );
}

const plugin = {
  // miniflare 4 calls getBindings(ourUnsafeBindings, workerIndex);
  // miniflare 5 calls getBindings(workerOptions, sharedOptions, workerIndex).
  getBindings(workerOptions, second, third) {
    const workerIndex = typeof second === "number" ? second : third;
    return ownBindings(workerOptions).map((b) => aiBinding(workerIndex, b));
  },
  // Only used by getPlatformProxy()/Miniflare#getBindings in Node, where we offer nothing.
  getNodeBindings() {
    return {};
  },
  async getServices({ options, workerIndex, log }) {
    const bindings = ownBindings(options);
    // A startup check: workerd's own error for a closed port does not say where it tried.
    // Runs on every (re)load; it only logs, never blocks the Worker from starting.
    for (const address of new Set(bindings.map((b) => b.options.address))) {
      if (!(await probe(address))) (log?.warn ? log.warn.bind(log) : console.warn)(unreachableMessage(address));
    }
    return bindings.flatMap((b) => emberServices(workerIndex, b));
  },
};

/** What miniflare looks up: `plugins[dev.plugin.name]`. */
export const plugins = { [PLUGIN_NAME]: plugin };
