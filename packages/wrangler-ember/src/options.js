// Option parsing shared by the miniflare plugin and the `init` CLI. No dependencies, so that
// miniflare can load the plugin from any project that has `wrangler-ember` installed.

/** Name under which src/plugin.js exports the plugin (`dev.plugin.name` in the wrangler config).
 * Not "ai": miniflare keys plugins by name, and "ai" would shadow its built-in AI plugin. */
export const PLUGIN_NAME = "ember";
/** Package name (`dev.plugin.package`): miniflare loads it with require.resolve from its own
 * location, so it must be installed in the Worker project's node_modules. */
export const PACKAGE_NAME = "wrangler-ember";
export const DEFAULT_ADDRESS = "127.0.0.1:8787";

/**
 * Normalises the binding's `dev.options` ({address?, token?}) into {address, token}.
 * `address` is host:port as workerd's external service wants it; a URL such as
 * http://127.0.0.1:8787/ is accepted too (people copy Ember's URL), but only plain http.
 * Throws an Error with a readable message on bad input.
 */
export function parseOptions(options = {}, where = "wrangler-ember") {
  if (options === null || typeof options !== "object" || Array.isArray(options)) {
    throw new Error(`${where}: options must be an object, got ${JSON.stringify(options)}`);
  }
  const address = parseAddress(options.address ?? process.env.EMBER_ADDRESS ?? DEFAULT_ADDRESS, where);
  // The token may come from the environment so it stays out of committed config files.
  const token = options.token ?? process.env.EMBER_TOKEN;
  if (token !== undefined && (typeof token !== "string" || !token.trim() || /[\r\n]/.test(token))) {
    throw new Error(`${where}: "token" must be a non-empty string on one line`);
  }
  return { address, token: token === undefined ? undefined : token.trim() };
}

/** "127.0.0.1:8787", "localhost:9000", "[::1]:8787", "http://host:port/" -> "host:port". */
export function parseAddress(value, where = "wrangler-ember") {
  if (typeof value !== "string" || !value.trim()) {
    throw new Error(`${where}: "address" must be a string like 127.0.0.1:8787, got ${JSON.stringify(value)}`);
  }
  let text = value.trim();
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(text);
  if (scheme) {
    // workerd's external service speaks plain HTTP here; https would need tls options.
    if (scheme[1].toLowerCase() !== "http") {
      throw new Error(`${where}: only http:// addresses are supported, got ${JSON.stringify(value)}`);
    }
    const url = new URL(text);
    if (url.pathname !== "/" || url.search) {
      // The binding's requests go to /run, /ai-api/... at the root; a path would be dropped silently.
      throw new Error(`${where}: the address must not have a path (Ember serves the binding at its root), got ${JSON.stringify(value)}`);
    }
    text = url.host || "";
    if (!url.port) text += ":80";
  }
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(text);
  if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) {
    throw new Error(`${where}: "address" must be host:port (e.g. 127.0.0.1:8787), got ${JSON.stringify(value)}`);
  }
  return `${m[1]}:${Number(m[2])}`;
}
