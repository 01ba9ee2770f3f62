// How many requests Ember's AI Gateway "default" has logged. A gateway mode must add to it: this
// shows the request really went through the gateway, not straight to the model.
const EMBER_URL = (process.env.EMBER_URL ?? "").replace(/\/$/, "");
const accountId = process.env.EMBER_ACCOUNT_ID || "local";
const token = process.env.EMBER_TOKEN || "dummy";

export async function gatewayLogCount() {
  const url = `${EMBER_URL}/client/v4/accounts/${accountId}/ai-gateway/gateways/default/logs?per_page=1`;
  const res = await fetch(url, { headers: { authorization: `Bearer ${token}` } });
  if (res.status === 404) return 0; // "default" is created on its first use
  if (!res.ok) throw new Error(`GET ${url}: ${res.status} ${await res.text()}`);
  return (await res.json()).result_info.total_count;
}
