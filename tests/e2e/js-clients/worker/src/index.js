// A Worker that uses the Vercel AI SDK with workers-ai-provider in binding mode
// (`createWorkersAI({ binding: env.AI })`) and LangChain's CloudflareWorkersAIEmbeddings.
// Every route does one library call and answers JSON describing what the library returned;
// test/ai-sdk-binding.test.js checks it. Errors come back as 500 {name, message, ...}.
import {
  embedMany, generateImage, generateObject, generateSpeech, generateText, isStepCount, rerank,
  streamText, transcribe,
} from "ai";
import { createWorkersAI } from "workers-ai-provider";
import { CloudflareWorkersAIEmbeddings } from "@langchain/cloudflare";
import { CHAT_MODEL, EMBED_MODEL, TOOL_MODEL, addTool, profileSchema } from "../../shared.js";

// maxRetries: 0, so an Ember error shows up as it is instead of being retried.
const opts = { maxRetries: 0 };

const routes = {
  "/ai/generate-text": async (ai, body) => {
    const r = await generateText({ ...opts, model: ai(CHAT_MODEL), prompt: body.prompt, maxOutputTokens: 32 });
    return { text: r.text, finishReason: r.finishReason, usage: r.usage };
  },

  // Collects the text stream inside the Worker, so the test sees the chunks the SDK produced.
  // Greedy (temperature 0): the test counts chunks, and a sampled answer can be a single token.
  "/ai/stream-text": async (ai, body) => {
    let error;
    const r = streamText({
      ...opts, model: ai(CHAT_MODEL), prompt: body.prompt, maxOutputTokens: 64, temperature: 0,
      onError: (e) => { error = e.error; },
    });
    const chunks = [];
    for await (const chunk of r.textStream) chunks.push(chunk);
    if (error) throw error;
    return { chunks, text: await r.text, usage: await r.usage };
  },

  "/ai/tools": async (ai, body) => {
    const executed = [];
    const r = await generateText({
      ...opts,
      model: ai(TOOL_MODEL),
      tools: { add: addTool(executed) },
      stopWhen: isStepCount(2),
      system: body.system,
      prompt: body.prompt,
      temperature: 0,
      maxOutputTokens: 128,
    });
    return {
      executed,
      steps: r.steps.map((s) => ({
        finishReason: s.finishReason,
        toolCalls: s.toolCalls.map((c) => ({ toolName: c.toolName, input: c.input })),
        toolResults: s.toolResults.map((t) => ({ toolName: t.toolName, output: t.output })),
        text: s.text,
      })),
      text: r.text,
      finishReason: r.finishReason,
    };
  },

  "/ai/generate-object": async (ai, body) => {
    const r = await generateObject({
      ...opts, model: ai(CHAT_MODEL), schema: profileSchema, prompt: body.prompt, maxOutputTokens: 128,
    });
    return { object: r.object, valid: profileSchema.safeParse(r.object).success };
  },

  "/ai/embed-many": async (ai, body) => {
    const r = await embedMany({ ...opts, model: ai.textEmbedding(EMBED_MODEL), values: body.values });
    return { embeddings: r.embeddings };
  },

  // Text-to-image: the tiny Stable Diffusion; only the binding can carry its PNG (the REST shim
  // JSON-parses every non-stream answer).
  "/ai/generate-image": async (ai, body) => {
    const r = await generateImage({ ...opts, model: ai.image("@hf/ember/tiny-sd"), prompt: body.prompt, size: "320x256" });
    return { bytes: [...r.image.uint8Array.slice(0, 32)], length: r.image.uint8Array.length, mediaType: r.image.mediaType };
  },

  "/ai/transcribe": async (ai, body) => {
    const audio = Uint8Array.from(atob(body.audio), (c) => c.charCodeAt(0));
    const r = await transcribe({ ...opts, model: ai.transcription("@cf/openai/whisper-tiny-en"), audio });
    return { text: r.text, segments: r.segments };
  },

  "/ai/speech": async (ai, body) => {
    const r = await generateSpeech({ ...opts, model: ai.speech("@cf/deepgram/aura-1"), text: body.text });
    return { bytes: [...r.audio.uint8Array.slice(0, 4)], length: r.audio.uint8Array.length };
  },

  "/ai/rerank": async (ai, body) => {
    const r = await rerank({
      ...opts, model: ai.reranking("@cf/baai/bge-reranker-base"),
      query: body.query, documents: body.documents, topN: body.topN,
    });
    return { ranking: r.ranking };
  },

  "/langchain/embed": async (_ai, body, env) => {
    const embeddings = new CloudflareWorkersAIEmbeddings({ binding: env.AI, model: EMBED_MODEL, maxRetries: 0 });
    return {
      documents: await embeddings.embedDocuments(body.values),
      query: await embeddings.embedQuery(body.query),
    };
  },
};

export default {
  async fetch(request, env) {
    const { pathname } = new URL(request.url);
    if (pathname === "/") return new Response("ok");
    const route = routes[pathname];
    if (!route || request.method !== "POST") return new Response("not found", { status: 404 });
    const workersai = createWorkersAI({ binding: env.AI });
    try {
      return Response.json(await route(workersai, await request.json(), env));
    } catch (e) {
      // Keep what the SDK knows about the failure (APICallError has these fields).
      const { name, message, statusCode, responseBody, cause } = e ?? {};
      return Response.json(
        { name, message: message ?? String(e), statusCode, responseBody, cause: cause ? String(cause) : undefined },
        { status: 500 },
      );
    }
  },
};
