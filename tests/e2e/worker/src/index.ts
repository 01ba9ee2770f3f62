import { Hono } from "hono";

// Minimal structural type for the AI binding (avoids a dependency on
// @cloudflare/workers-types; wrangler/esbuild strips types anyway).
interface AiGateway {
  getLog(logId: string): Promise<any>;
  patchLog(logId: string, data: Record<string, unknown>): Promise<void>;
  getUrl(provider?: string): Promise<string>;
}

interface AiBinding {
  run(model: string, inputs: Record<string, unknown>, options?: Record<string, unknown>): Promise<any>;
  models(params?: Record<string, unknown>): Promise<any[]>;
  gateway(id: string): AiGateway;
  lastRequestId?: string | null;
  aiGatewayLogId?: string | null;
}

type Bindings = { AI: AiBinding };

const CHAT_MODEL = "@cf/meta/llama-3.1-8b-instruct";
const EMBED_MODEL = "@cf/google/embeddinggemma-300m";

const app = new Hono<{ Bindings: Bindings }>();

// Surface binding errors as JSON so a failing test shows what env.AI threw.
app.onError((err, c) => c.json({ name: err.name, message: err.message }, 500));

app.get("/", (c) => c.text("ok"));

app.post("/chat", async (c) => {
  const { messages } = await c.req.json<{ messages: unknown[] }>();
  const result = await c.env.AI.run(CHAT_MODEL, { messages, max_tokens: 32 });
  c.header("x-last-request-id", String(c.env.AI.lastRequestId ?? ""));
  return c.json(result);
});

app.post("/chat/stream", async (c) => {
  const { messages } = await c.req.json<{ messages: unknown[] }>();
  const stream = await c.env.AI.run(CHAT_MODEL, { messages, stream: true, max_tokens: 32 });
  return new Response(stream, { headers: { "content-type": "text/event-stream" } });
});

app.post("/embed", async (c) => {
  const { text } = await c.req.json<{ text: string | string[] }>();
  return c.json(await c.env.AI.run(EMBED_MODEL, { text }));
});

// Any model, any inputs: the text tasks (classification, reranking, translation, summarization).
app.post("/run", async (c) => {
  const { model, inputs } = await c.req.json<{ model: string; inputs: Record<string, unknown> }>();
  return c.json(await c.env.AI.run(model, inputs));
});

// Async batch: queue embeddings with {queueRequest: true}, then poll with the request_id until
// the responses are there.
app.post("/batch", async (c) => {
  const { texts } = await c.req.json<{ texts: string[] }>();
  const requests = texts.map((text, i) => ({ text, external_reference: `ref-${i}` }));
  const queued = await c.env.AI.run(EMBED_MODEL, { requests }, { queueRequest: true });
  for (let poll = 0; poll < 600; poll++) {
    const state = await c.env.AI.run(EMBED_MODEL, { request_id: queued.request_id }, { queueRequest: true });
    if (state.responses) return c.json({ queued, done: state });
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return c.json({ queued, error: "the batch did not finish in a minute" }, 500);
});

// Speech: the request body is the audio, passed on as an array of byte values, or as a stream,
// which the binding posts as the raw body with the other inputs in the query string.
app.post("/transcribe/bytes", async (c) => {
  const audio = [...new Uint8Array(await c.req.arrayBuffer())];
  return c.json(await c.env.AI.run("@cf/openai/whisper-tiny-en", { audio }));
});

app.post("/transcribe/stream", async (c) => {
  const audio = { body: c.req.raw.body, contentType: "audio/wav" };
  return c.json(await c.env.AI.run("@cf/openai/whisper-large-v3-turbo", { audio, language: "en" }));
});

// Image classification: the request body is the image, passed on as an array of byte values.
app.post("/classify", async (c) => {
  const image = [...new Uint8Array(await c.req.arrayBuffer())];
  return c.json(await c.env.AI.run("@cf/microsoft/resnet-50", { image }));
});

// Object detection: the same, on DETR's id.
app.post("/detect", async (c) => {
  const image = [...new Uint8Array(await c.req.arrayBuffer())];
  return c.json(await c.env.AI.run("@cf/facebook/detr-resnet-50", { image }));
});

// Vision chat: the posted image as a data URL in an image_url content part, on the tiny Gemma 3
// with its image encoder (random weights: the text is what llama-mtmd-cli made, not sense).
app.post("/see", async (c) => {
  let binary = "";
  for (const byte of new Uint8Array(await c.req.arrayBuffer())) binary += String.fromCharCode(byte);
  const url = "data:image/png;base64," + btoa(binary);
  return c.json(
    await c.env.AI.run("@hf/ember/tiny-gemma3-vision", {
      messages: [{ role: "user", content: [{ type: "image_url", image_url: { url } }, { type: "text", text: "Describe this image." }] }],
      max_tokens: 16,
      temperature: 0,
    }),
  );
});

// Text-to-image: the binding answers the PNG as a stream; the route reads it and reports what it
// got (the PNG signature and the size in its IHDR chunk).
app.post("/imagine", async (c) => {
  const png = await c.env.AI.run("@hf/ember/tiny-sd", { prompt: "a lighthouse", num_steps: 2, width: 320, height: 256 });
  const bytes = new Uint8Array(await new Response(png).arrayBuffer());
  const view = new DataView(bytes.buffer);
  const signature = [...bytes.slice(0, 8)].join(",") === "137,80,78,71,13,10,26,10";
  return c.json({ signature, width: view.getUint32(16), height: view.getUint32(20), bytes: bytes.length });
});

// AI Gateway through the binding: the same run twice through `default` with a cache TTL (the
// second from the cache), each run's log id, feedback on the first, and the gateway helpers.
app.post("/gateway", async (c) => {
  const options = { gateway: { id: "default", cacheTtl: 60, metadata: { suite: "e2e" } } };
  const inputs = { text: "I love this movie" };
  const first = await c.env.AI.run("@cf/huggingface/distilbert-sst-2-int8", inputs, options);
  const firstLogId = c.env.AI.aiGatewayLogId;
  const second = await c.env.AI.run("@cf/huggingface/distilbert-sst-2-int8", inputs, options);
  const secondLogId = c.env.AI.aiGatewayLogId;
  const gateway = c.env.AI.gateway("default");
  await gateway.patchLog(firstLogId!, { feedback: 1, score: 80 });
  const firstLog = await gateway.getLog(firstLogId!);
  const secondLog = await gateway.getLog(secondLogId!);
  let missing = "";
  try {
    await gateway.getLog("no-such-log");
  } catch (error) {
    missing = (error as Error).name;
  }
  return c.json({ first, second, firstLogId, secondLogId, firstLog, secondLog, missing, url: await gateway.getUrl("workers-ai") });
});

app.get("/models", async (c) => {
  return c.json(await c.env.AI.models({ task: "Text Embeddings" }));
});

app.get("/bad-model", async (c) => {
  try {
    const result = await c.env.AI.run("@cf/nope/nope", { prompt: "x" });
    return c.json({ unexpected: "no error thrown", result }, 200);
  } catch (e: any) {
    return c.json({ name: e?.name, message: e?.message ?? String(e) }, 500);
  }
});

export default app;
