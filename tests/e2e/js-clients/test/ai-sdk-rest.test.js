// Vercel AI SDK (`ai`) + workers-ai-provider in REST mode, pointed at Ember through the provider's
// documented `fetch` option (it has no base-URL option; the REST host is hard-coded).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import {
  Output, embedMany, generateObject, generateSpeech, generateText, isStepCount, rerank, streamObject,
  streamText, transcribe,
} from "ai";
import { createWorkersAI } from "workers-ai-provider";
import {
  ACCOUNT_ID, CHAT_COMPLETIONS_MODEL, CHAT_MODEL, EMBED_MODEL, EMBED_TEXTS, PROFILE_PROMPT, SPEECH_WAV, TIMEOUT, TOKEN,
  TOOL_MODEL, TOOL_PROMPT, TOOL_SYSTEM, addTool, assertEmbedOrder, assertVector, emberFetch, looksLikeMp3, profileSchema,
} from "./common.js";

// A fresh provider per test, so each test sees only its own requests in `fetch.calls`.
function provider() {
  const fetch = emberFetch();
  return { workersai: createWorkersAI({ accountId: ACCOUNT_ID, apiKey: TOKEN, fetch }), fetch };
}

// maxRetries: 0 everywhere, so an Ember error shows up as it is instead of being retried.
const opts = { maxRetries: 0 };

test("generateText", { timeout: TIMEOUT }, async () => {
  const { workersai, fetch } = provider();
  const result = await generateText({
    ...opts,
    model: workersai(CHAT_MODEL),
    prompt: "Say hello in one short sentence.",
    maxOutputTokens: 32,
  });
  assert.equal(fetch.calls.length, 1);
  assert.match(fetch.calls[0].url, /\/client\/v4\/accounts\/[^/]+\/ai\/run\/@cf\/meta\/llama-3\.1-8b-instruct$/);
  assert.ok(result.text.trim().length > 0, "empty text");
  assert.ok(["stop", "length"].includes(result.finishReason), `finishReason ${result.finishReason}`);
  assert.ok(result.usage.inputTokens > 0, `usage ${JSON.stringify(result.usage)}`);
  assert.ok(result.usage.outputTokens > 0, `usage ${JSON.stringify(result.usage)}`);
});

test("streamText: text arrives in several chunks", { timeout: TIMEOUT }, async () => {
  const { workersai, fetch } = provider();
  let streamError; // streamText reports errors through onError, not by throwing
  const result = streamText({
    ...opts,
    model: workersai(CHAT_MODEL),
    prompt: "Count from one to ten in words, separated by commas.",
    maxOutputTokens: 64,
    temperature: 0, // the test counts chunks, and a sampled answer can be a single token
    onError: ({ error }) => { streamError = error; },
  });
  const chunks = [];
  for await (const chunk of result.textStream) chunks.push(chunk);
  if (streamError) throw streamError;
  assert.equal(fetch.calls[0].body.stream, true, "provider did not ask for a stream");
  assert.ok(chunks.length > 1, `only ${chunks.length} chunk(s): ${JSON.stringify(chunks)}`);
  assert.ok(chunks.join("").trim().length > 0, "empty text");
  assert.equal(await result.text, chunks.join(""));
  const usage = await result.usage;
  assert.ok(usage.outputTokens > 0, `usage ${JSON.stringify(usage)}`);
});

test("a chat-completions model (OpenAI's shapes on /ai/run): generateText and streamText", { timeout: TIMEOUT }, async () => {
  const { workersai, fetch } = provider();
  const prompt = "Count from one to ten in words, separated by commas.";
  // Greedy: the test checks the words, and a sampled answer may count in digits.
  const whole = await generateText({
    ...opts, model: workersai(CHAT_COMPLETIONS_MODEL), prompt, maxOutputTokens: 64, temperature: 0,
  });
  assert.match(fetch.calls[0].url, /\/ai\/run\/@cf\/google\/gemma-4-26b-a4b-it$/);
  assert.match(whole.text, /three/i, whole.text);
  assert.ok(whole.usage.outputTokens > 0, `usage ${JSON.stringify(whole.usage)}`);
  let streamError;
  const result = streamText({
    ...opts,
    model: workersai(CHAT_COMPLETIONS_MODEL),
    prompt,
    maxOutputTokens: 64,
    temperature: 0, // the test counts chunks, and a sampled answer can be a single token
    onError: ({ error }) => { streamError = error; },
  });
  const chunks = [];
  for await (const chunk of result.textStream) chunks.push(chunk);
  if (streamError) throw streamError;
  assert.ok(chunks.length > 1, `only ${chunks.length} chunk(s): ${JSON.stringify(chunks)}`);
  assert.match(chunks.join(""), /three/i, chunks.join(""));
  assert.equal(await result.finishReason, "stop");
  assert.ok((await result.usage).outputTokens > 0);
});

test("tool call round trip (zod schema, stopWhen: isStepCount(2))", { timeout: TIMEOUT }, async () => {
  const { workersai, fetch } = provider();
  const executed = [];
  const result = await generateText({
    ...opts,
    model: workersai(TOOL_MODEL),
    tools: { add: addTool(executed) },
    stopWhen: isStepCount(2),
    system: TOOL_SYSTEM,
    prompt: TOOL_PROMPT,
    temperature: 0,
    maxOutputTokens: 128,
  });
  const trace = JSON.stringify(result.steps.map((s) => ({ toolCalls: s.toolCalls, text: s.text })));
  // Step 1: the model called `add` with arguments that passed the zod schema, and it ran.
  assert.equal(result.steps.length, 2, trace);
  assert.equal(result.steps[0].toolCalls[0]?.toolName, "add", trace);
  assert.ok(executed.length >= 1, "execute() did not run");
  const sum = executed[0].a + executed[0].b;
  assert.deepEqual(result.steps[0].toolResults[0].output, { sum });
  // Step 2: the result went back to Ember as a tool message answering the assistant's tool call ...
  assert.equal(fetch.calls.length, 2);
  const messages = fetch.calls[1].body.messages;
  const assistant = messages.find((m) => m.role === "assistant");
  const toolMsg = messages.find((m) => m.role === "tool");
  assert.equal(assistant?.tool_calls?.[0]?.function?.name, "add");
  assert.deepEqual(JSON.parse(toolMsg.content), { sum });
  assert.equal(toolMsg.tool_call_id, assistant.tool_calls[0].id);
  // ... and the model answered in text, with the tool's result.
  assert.equal(result.steps[1].toolCalls.length, 0, trace);
  assert.ok(result.text.includes(String(sum)), `final text lacks ${sum}: ${trace}`);
});

test("streamText with a tool: streamed tool call, then streamed answer", { timeout: TIMEOUT }, async () => {
  const { workersai, fetch } = provider();
  let streamError;
  const result = streamText({
    ...opts,
    model: workersai(TOOL_MODEL),
    tools: { add: addTool() },
    stopWhen: isStepCount(2),
    system: TOOL_SYSTEM,
    prompt: TOOL_PROMPT,
    temperature: 0,
    maxOutputTokens: 128,
    onError: ({ error }) => { streamError = error; },
  });
  const parts = [];
  for await (const part of result.fullStream) parts.push(part);
  if (streamError) throw streamError;
  const types = parts.map((p) => p.type);
  assert.ok(fetch.calls.every((c) => c.body.stream === true), "provider did not ask for streams");
  const call = parts.find((p) => p.type === "tool-call");
  assert.equal(call?.toolName, "add", types.join(" "));
  const toolResult = parts.find((p) => p.type === "tool-result");
  assert.deepEqual(toolResult?.output, { sum: call.input.a + call.input.b });
  // The second step streams the answer in several text deltas.
  const steps = await result.steps;
  assert.equal(steps.length, 2, types.join(" "));
  assert.ok(types.filter((t) => t === "text-delta").length > 1, types.join(" "));
  assert.ok((await result.text).includes(String(call.input.a + call.input.b)), await result.text);
});

test("generateText with output: Output.object (zod)", { timeout: TIMEOUT }, async () => {
  const { workersai, fetch } = provider();
  const { output } = await generateText({
    ...opts,
    model: workersai(CHAT_MODEL),
    output: Output.object({ schema: profileSchema }),
    prompt: PROFILE_PROMPT,
    maxOutputTokens: 128,
  });
  assert.equal(fetch.calls[0].body.response_format?.type, "json_schema");
  assert.deepEqual(profileSchema.parse(output), output);
});

test("generateObject with a zod schema", { timeout: TIMEOUT }, async () => {
  const { workersai, fetch } = provider();
  const { object } = await generateObject({
    ...opts,
    model: workersai(CHAT_MODEL),
    schema: profileSchema,
    prompt: PROFILE_PROMPT,
    maxOutputTokens: 128,
  });
  assert.equal(fetch.calls[0].body.response_format?.type, "json_schema");
  // generateObject already validated it; parse again to make the check explicit.
  assert.deepEqual(profileSchema.parse(object), object);
});

test("streamObject with a zod schema", { timeout: TIMEOUT }, async () => {
  const { workersai, fetch } = provider();
  let streamError;
  const result = streamObject({
    ...opts,
    model: workersai(CHAT_MODEL),
    schema: profileSchema,
    prompt: PROFILE_PROMPT,
    maxOutputTokens: 128,
    onError: ({ error }) => { streamError = error; },
  });
  const partials = [];
  for await (const partial of result.partialObjectStream) partials.push(partial);
  if (streamError) throw streamError;
  assert.equal(fetch.calls[0].body.stream, true, "provider did not ask for a stream");
  assert.equal(fetch.calls[0].body.response_format?.type, "json_schema");
  assert.ok(partials.length > 1, `only ${partials.length} partial object(s)`);
  const object = await result.object;
  assert.deepEqual(profileSchema.parse(object), object);
});

test("embedMany: one 768-d vector per value, in order", { timeout: TIMEOUT }, async () => {
  const { workersai } = provider();
  const { embeddings } = await embedMany({
    ...opts,
    model: workersai.textEmbedding(EMBED_MODEL),
    values: EMBED_TEXTS,
  });
  assert.equal(embeddings.length, EMBED_TEXTS.length);
  embeddings.forEach((v) => assertVector(v));
  assertEmbedOrder(embeddings);
});

test("transcribe: whisper-tiny-en", { timeout: TIMEOUT }, async () => {
  const { workersai, fetch } = provider();
  const { text, segments } = await transcribe({
    ...opts,
    model: workersai.transcription("@cf/openai/whisper-tiny-en"),
    audio: await readFile(SPEECH_WAV),
  });
  assert.ok(Array.isArray(fetch.calls[0].body.audio), "provider sent audio as a byte array");
  assert.match(text, /lazy dog/i);
  // whisper-tiny-en answers `words`, which the provider turns into segments.
  assert.ok(segments.length > 0, "no segments (from words)");
  assert.ok(segments.every((s) => s.endSecond >= s.startSecond), JSON.stringify(segments));
});

test("generateSpeech: Deepgram aura-1 answers MP3 bytes", { timeout: TIMEOUT }, async () => {
  const { workersai } = provider();
  const { audio } = await generateSpeech({
    ...opts,
    model: workersai.speech("@cf/deepgram/aura-1"),
    text: "Hello from Ember.",
  });
  assert.ok(audio.uint8Array.length > 100, `only ${audio.uint8Array.length} bytes`);
  assert.ok(looksLikeMp3(audio.uint8Array), `not MP3: first bytes ${[...audio.uint8Array.slice(0, 4)]}`);
});

test("rerank: bge-reranker-base puts the relevant passage first", { timeout: TIMEOUT }, async () => {
  const { workersai } = provider();
  const documents = ["Venus is very hot.", "Mars is called the Red Planet.", "Bananas are yellow."];
  const { ranking } = await rerank({
    ...opts,
    model: workersai.reranking("@cf/baai/bge-reranker-base"),
    query: "Which planet is the Red Planet?",
    documents,
    topN: 2,
  });
  assert.equal(ranking.length, 2, JSON.stringify(ranking));
  assert.equal(ranking[0].originalIndex, 1, JSON.stringify(ranking));
  assert.equal(ranking[0].document, documents[1]);
  assert.ok(ranking[0].score >= ranking[1].score, JSON.stringify(ranking));
});
