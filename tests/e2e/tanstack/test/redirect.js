// Points the package's hard-coded Cloudflare hosts at Ember.
//
// @cloudflare/tanstack-ai has no base-URL or fetch option in its REST modes: it builds
// https://api.cloudflare.com/client/v4/accounts/{id}/ai/... (REST) and
// https://gateway.ai.cloudflare.com/v1/{id}/{gateway} (AI Gateway REST) and calls the global
// fetch (the OpenAI SDK it uses for chat picks up globalThis.fetch too). So the test wraps
// globalThis.fetch: only scheme+host are swapped for EMBER_URL; path, query, headers and body go
// out exactly as the package wrote them. Every request is recorded in `sent` so tests can check
// which URL the package actually used (and show what Ember answered when it failed).
export const EMBER_URL = (process.env.EMBER_URL ?? "").replace(/\/$/, "");
if (!EMBER_URL) throw new Error("EMBER_URL is required (e.g. http://127.0.0.1:8787)");

const HOSTS = ["https://api.cloudflare.com/", "https://gateway.ai.cloudflare.com/"];
const realFetch = globalThis.fetch;
export const sent = [];

globalThis.fetch = async (input, init) => {
  const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
  if (url.startsWith(EMBER_URL + "/")) return realFetch(input, init); // the tests' own calls
  const host = HOSTS.find((h) => url.startsWith(h));
  if (!host) throw new Error(`unexpected fetch to ${url} (not a Cloudflare API host)`);
  const target = EMBER_URL + "/" + url.slice(host.length);
  const method = init?.method ?? (input instanceof Request ? input.method : "GET");
  const entry = { method, url, target, body: typeof init?.body === "string" ? init.body : undefined };
  sent.push(entry);
  const res = await (input instanceof Request ? realFetch(new Request(target, input), init) : realFetch(target, init));
  entry.status = res.status;
  // Keep the answer of a failed request for the test's error message.
  if (!res.ok) entry.answer = await res.clone().text();
  return res;
};

// The failed requests among sent.slice(from), for an error message.
export function failedSince(from) {
  return sent
    .slice(from)
    .filter((s) => s.answer !== undefined)
    .map((s) => `${s.method} ${s.url} (-> ${s.target})\n  body: ${s.body?.slice(0, 600)}\n  answer ${s.status}: ${s.answer.slice(0, 600)}`);
}
