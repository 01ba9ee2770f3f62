// Runs the shared TanStack AI scenarios (../../scenarios.js) inside the Worker, with the AI
// binding in its three shapes:
//   POST /binding/{scenario}          { binding: env.AI }                       plain binding
//   POST /gateway-binding/{scenario}  { binding: env.AI.gateway("default") }    AI Gateway binding
//   POST /gateway-option/{scenario}   { binding: env.AI, gateway: "default" }   env.AI.run(..., {gateway}) (chat only)
// The answer is the scenario's JSON result, or {error} with status 500 when it threw.
// The transcription scenario takes the audio file as the request body.
import { CHAT_MODEL, scenarios } from "../../scenarios.js";

const GATEWAY_ID = "default";

function adapterConfig(mode, env) {
  if (mode === "binding") return { binding: env.AI };
  if (mode === "gateway-binding") return { binding: env.AI.gateway(GATEWAY_ID) };
  if (mode === "gateway-option") return { binding: env.AI, gateway: GATEWAY_ID };
  return null;
}

export default {
  async fetch(request, env) {
    const [, mode, name] = new URL(request.url).pathname.split("/");
    if (!mode) return new Response("ok");
    const config = adapterConfig(mode, env);
    const scenario = Object.hasOwn(scenarios, name) ? scenarios[name] : null;
    if (!config || !scenario || request.method !== "POST") {
      return Response.json({ error: { message: `no route ${request.method} /${mode}/${name}` } }, { status: 404 });
    }
    const input = name === "transcription" ? await request.arrayBuffer() : undefined;
    try {
      return Response.json(await scenario(config, input, CHAT_MODEL[mode]));
    } catch (err) {
      const { name: errName, message, status, responseBody } = err;
      return Response.json({ error: { name: errName, message, status, responseBody } }, { status: 500 });
    }
  },
};
