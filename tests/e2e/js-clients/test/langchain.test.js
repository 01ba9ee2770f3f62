// LangChain JS pointed at Ember.
// - @langchain/cloudflare: ChatCloudflareWorkersAI and CloudflareWorkersAI take a `baseUrl`
//   (default https://api.cloudflare.com/client/v4/accounts/{id}/ai/run). Its
//   CloudflareWorkersAIEmbeddings only takes a Worker binding, so it is tested inside the Worker
//   (ai-sdk-binding.test.js, /langchain/embed).
// - @langchain/openai: ChatOpenAI and OpenAIEmbeddings with configuration.baseURL set to Ember's
//   OpenAI-compatible base, .../accounts/{id}/ai/v1.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ChatCloudflareWorkersAI, CloudflareWorkersAI } from "@langchain/cloudflare";
import { ChatOpenAI, OpenAIEmbeddings } from "@langchain/openai";
import { tool } from "@langchain/core/tools";
import { HumanMessage, SystemMessage, ToolMessage } from "@langchain/core/messages";
import { z } from "zod";
import {
  ACCOUNT_ID, CHAT_MODEL, EMBED_MODEL, EMBED_TEXTS, EMBER_URL, PROFILE_PROMPT, TIMEOUT, TOKEN,
  TOOL_MODEL, TOOL_PROMPT, TOOL_SYSTEM,
  assertEmbedOrder, assertVector, profileSchema,
} from "./common.js";

const RUN_BASE = `${EMBER_URL}/client/v4/accounts/${ACCOUNT_ID}/ai/run`;
const OPENAI_BASE = `${EMBER_URL}/client/v4/accounts/${ACCOUNT_ID}/ai/v1`;

const cfChat = (fields = {}) =>
  new ChatCloudflareWorkersAI({
    model: CHAT_MODEL,
    cloudflareAccountId: ACCOUNT_ID,
    cloudflareApiToken: TOKEN,
    baseUrl: RUN_BASE,
    maxRetries: 0,
    ...fields,
  });

const openaiChat = (fields = {}) =>
  new ChatOpenAI({
    model: CHAT_MODEL,
    apiKey: TOKEN,
    maxTokens: 128,
    maxRetries: 0,
    configuration: { baseURL: OPENAI_BASE },
    ...fields,
  });

// ------------------------------------------------------------------ @langchain/cloudflare

test("ChatCloudflareWorkersAI.invoke", { timeout: TIMEOUT }, async () => {
  const reply = await cfChat().invoke([
    ["system", "You are a helpful assistant. Answer briefly."],
    ["human", "Say hello."],
  ]);
  assert.equal(typeof reply.content, "string");
  assert.ok(reply.content.trim().length > 0, "empty reply");
});

test("ChatCloudflareWorkersAI.stream: several chunks", { timeout: TIMEOUT }, async () => {
  const chunks = [];
  for await (const chunk of await cfChat().stream([["human", "Count from one to ten in words."]])) {
    chunks.push(chunk.content);
  }
  const text = chunks.join("");
  assert.ok(chunks.filter((c) => c).length > 1, `only ${chunks.length} chunk(s)`);
  assert.ok(text.trim().length > 0, "empty text");
});

test("ChatCloudflareWorkersAI with streaming: true (invoke collects the stream)", { timeout: TIMEOUT }, async () => {
  const reply = await cfChat({ streaming: true }).invoke([["human", "Say hello."]]);
  assert.equal(typeof reply.content, "string");
  assert.ok(reply.content.trim().length > 0, "empty reply");
});

test("CloudflareWorkersAI (prompt LLM).invoke", { timeout: TIMEOUT }, async () => {
  const llm = new CloudflareWorkersAI({
    model: CHAT_MODEL,
    cloudflareAccountId: ACCOUNT_ID,
    cloudflareApiToken: TOKEN,
    baseUrl: RUN_BASE,
    maxRetries: 0,
  });
  const text = await llm.invoke("Write one sentence about the sea.");
  assert.equal(typeof text, "string");
  assert.ok(text.trim().length > 0, "empty text");
});

// ------------------------------------------------------------------ @langchain/openai

test("ChatOpenAI.invoke (baseURL .../ai/v1)", { timeout: TIMEOUT }, async () => {
  const reply = await openaiChat().invoke("Say hello in one short sentence.");
  assert.ok(String(reply.content).trim().length > 0, "empty reply");
  assert.ok(reply.usage_metadata?.input_tokens > 0, `usage ${JSON.stringify(reply.usage_metadata)}`);
  assert.ok(reply.usage_metadata?.output_tokens > 0, `usage ${JSON.stringify(reply.usage_metadata)}`);
});

test("ChatOpenAI.stream: several chunks", { timeout: TIMEOUT }, async () => {
  const chunks = [];
  // Greedy: the test counts chunks, and a sampled answer can be a single token.
  for await (const chunk of await openaiChat({ temperature: 0 }).stream("Count from one to ten in words.")) {
    if (chunk.content) chunks.push(chunk.content);
  }
  assert.ok(chunks.length > 1, `only ${chunks.length} chunk(s)`);
  assert.ok(chunks.join("").trim().length > 0, "empty text");
});

test("ChatOpenAI.bindTools: tool call round trip", { timeout: TIMEOUT }, async () => {
  const add = tool(async ({ a, b }) => JSON.stringify({ sum: a + b }), {
    name: "add",
    description: "Add two integers and return their sum.",
    schema: z.object({ a: z.number(), b: z.number() }),
  });
  const model = openaiChat({ model: TOOL_MODEL, temperature: 0 }).bindTools([add]);
  const messages = [new SystemMessage(TOOL_SYSTEM), new HumanMessage(TOOL_PROMPT)];
  const first = await model.invoke(messages);
  assert.equal(first.tool_calls?.length, 1, `tool_calls ${JSON.stringify(first.tool_calls)}`);
  const call = first.tool_calls[0];
  assert.equal(call.name, "add");
  assert.ok(call.id, "tool call without id");
  assert.equal(typeof call.args.a, "number");
  assert.equal(typeof call.args.b, "number");
  // Run the tool and send its result back.
  const result = await add.invoke(call);
  assert.ok(result instanceof ToolMessage);
  const second = await model.invoke([...messages, first, result]);
  assert.equal(second.tool_calls?.length ?? 0, 0, `unexpected second tool call ${JSON.stringify(second.tool_calls)}`);
  const sum = call.args.a + call.args.b;
  assert.ok(String(second.content).includes(String(sum)), `final answer lacks ${sum}: ${second.content}`);
});

test("ChatOpenAI.withStructuredOutput(zod)", { timeout: TIMEOUT }, async () => {
  const object = await openaiChat().withStructuredOutput(profileSchema).invoke(PROFILE_PROMPT);
  assert.deepEqual(profileSchema.parse(object), object);
});

test("OpenAIEmbeddings: embedDocuments and embedQuery", { timeout: TIMEOUT }, async () => {
  const embeddings = new OpenAIEmbeddings({
    model: EMBED_MODEL,
    apiKey: TOKEN,
    maxRetries: 0,
    configuration: { baseURL: OPENAI_BASE },
  });
  const docs = await embeddings.embedDocuments(EMBED_TEXTS);
  assert.equal(docs.length, EMBED_TEXTS.length);
  docs.forEach((v) => assertVector(v));
  assertEmbedOrder(docs);
  const query = await embeddings.embedQuery("Where is the cat?");
  assertVector(query);
});
