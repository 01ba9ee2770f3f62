// What each test asks TanStack AI to do, shared by the Node tests (REST and AI Gateway REST
// configs) and the Worker (binding and AI Gateway binding configs), so every mode runs the very
// same calls. Each scenario takes an @cloudflare/tanstack-ai adapter config and returns plain
// JSON; the assertions live in test/checks.js.
//
// Imports use the package's subpath exports: its root index also loads the OpenAI, Anthropic,
// Gemini, Grok and OpenRouter gateway adapters, which pull in their (optional) SDKs.
import {
  chat,
  generateImage,
  generateSpeech,
  generateTranscription,
  maxIterations,
  summarize,
  toolDefinition,
} from "@tanstack/ai";
import { createWorkersAiChat } from "@cloudflare/tanstack-ai/adapters/workers-ai";
import { createWorkersAiImage } from "@cloudflare/tanstack-ai/adapters/workers-ai-image";
import { createWorkersAiTranscription } from "@cloudflare/tanstack-ai/adapters/workers-ai-transcription";
import { createWorkersAiTts } from "@cloudflare/tanstack-ai/adapters/workers-ai-tts";
import { createWorkersAiSummarize } from "@cloudflare/tanstack-ai/adapters/workers-ai-summarize";
import { z } from "zod";

export const MODELS = {
  chat: "@cf/meta/llama-3.1-8b-instruct", // Ember aliases it to a local Qwen2.5-Coder-0.5B
  // Workers AI's newer chat-completions family, which answers in OpenAI's shapes even on its run
  // endpoint (Ember: served by its stand-in, the same local Qwen2.5-Coder-0.5B).
  chatCompletions: "@cf/google/gemma-4-26b-a4b-it",
  image: "@hf/ember/tiny-sd",
  transcription: "@cf/openai/whisper-tiny-en",
  speech: "@cf/deepgram/aura-1", // the model family the TTS adapter is written for (raw MP3)
  melotts: "@cf/myshell-ai/melotts",
  summarize: "@cf/facebook/bart-large-cnn",
};

// The chat model each mode asks for. Through AI Gateway the package reads Workers AI's answers as
// OpenAI's, which Workers AI writes only for its chat-completions family: those modes need such a
// model (with the older family they fail on Cloudflare as on Ember).
export const CHAT_MODEL = {
  rest: MODELS.chat,
  binding: MODELS.chat,
  "gateway-option": MODELS.chat,
  "gateway-rest": MODELS.chatCompletions,
  "gateway-binding": MODELS.chatCompletions,
};

export const SUMMARY_SOURCE =
  "The city council met on Tuesday to discuss the new bridge across the river. " +
  "Engineers said construction would take two years and cost about 40 million dollars. " +
  "Several residents spoke in favour because the bridge would cut their commute in half, " +
  "while others worried about noise and traffic during the works. The council will vote next month.";

// The adapter logs here when its stream fails and it silently retries without streaming, or
// when it cannot parse an SSE event: the checks want none of that.
async function withWarnings(fn) {
  const warnings = [];
  const original = console.warn;
  console.warn = (...args) => {
    warnings.push(args.map((a) => (a instanceof Error ? a.message : String(a))).join(" "));
    original(...args);
  };
  try {
    return { ...(await fn()), warnings };
  } finally {
    console.warn = original;
  }
}

// Collects a chat() stream into a list of its events (AG-UI chunks: type, delta, tool names...).
async function collect(stream) {
  const events = [];
  for await (const chunk of stream) events.push(chunk);
  return events;
}

const weatherTool = (calls) =>
  toolDefinition({
    name: "get_weather",
    description: "Get the current weather for a city",
    inputSchema: z.object({ city: z.string().describe("City name, e.g. Paris") }),
  }).server(async ({ city }) => {
    calls.push({ city });
    return { city, temperatureC: 21, condition: "sunny" };
  });

export const scenarios = {
  // Non-streaming chat: chat({stream: false}) resolves to the whole text.
  async text(config, _input, chatModel = MODELS.chat) {
    return withWarnings(async () => {
      const adapter = createWorkersAiChat(chatModel, config);
      const text = await chat({
        adapter,
        stream: false,
        messages: [{ role: "user", content: "Reply with one short friendly greeting." }],
        modelOptions: { max_tokens: 24 },
      });
      return { text };
    });
  },

  // Streaming chat: the default chat() is an async iterable of events.
  async stream(config, _input, chatModel = MODELS.chat) {
    return withWarnings(async () => {
      const adapter = createWorkersAiChat(chatModel, config);
      const events = await collect(
        chat({
          adapter,
          messages: [{ role: "user", content: "Count from 1 to 10, separated by spaces." }],
          modelOptions: { max_tokens: 40 },
        }),
      );
      return { events };
    });
  },

  // Tool round trip: the model calls get_weather, TanStack runs it and sends the result back,
  // the model answers in text. A middleware forces the tool on the first turn (tool_choice in
  // modelOptions, which the adapter passes through in its REST and AI Gateway modes; its binding
  // shim drops tool_choice, so there the model chooses, and temperature 0 keeps that choice
  // repeatable) and offers no tools on the next turns, so the model answers from the tool result.
  async tool(config, _input, chatModel = MODELS.chat) {
    return withWarnings(async () => {
      const calls = [];
      const adapter = createWorkersAiChat(chatModel, config);
      const forceToolFirst = {
        onConfig(ctx, cfg) {
          if (ctx.phase !== "beforeModel") return;
          const { tool_choice, ...modelOptions } = cfg.modelOptions ?? {};
          if (ctx.iteration > 0) return { tools: [], modelOptions };
          const force = { type: "function", function: { name: "get_weather" } };
          return { modelOptions: { ...modelOptions, tool_choice: force } };
        },
      };
      const events = await collect(
        chat({
          adapter,
          messages: [{ role: "user", content: "What is the weather in Paris right now?" }],
          tools: [weatherTool(calls)],
          agentLoopStrategy: maxIterations(3),
          middleware: [forceToolFirst],
          modelOptions: { max_tokens: 64, temperature: 0 },
        }),
      );
      return { events, calls };
    });
  },

  // Structured output: chat({outputSchema}) resolves to an object validated against the schema.
  async structured(config, _input, chatModel = MODELS.chat) {
    return withWarnings(async () => {
      const adapter = createWorkersAiChat(chatModel, config);
      const data = await chat({
        adapter,
        messages: [
          {
            role: "user",
            content:
              "Paris is the capital of France and has about 2.1 million inhabitants. " +
              "Extract the city, its country and its population in millions.",
          },
        ],
        outputSchema: z.object({
          city: z.string(),
          country: z.string(),
          population_millions: z.number(),
        }),
      });
      return { data };
    });
  },

  async image(config) {
    const adapter = createWorkersAiImage(MODELS.image, config);
    const result = await generateImage({ adapter, prompt: "a red circle on a white background" });
    return { images: result.images };
  },

  // `audio` is the WAV file's bytes (an ArrayBuffer).
  async transcription(config, audio) {
    const adapter = createWorkersAiTranscription(MODELS.transcription, config);
    const result = await generateTranscription({ adapter, audio });
    return { text: result.text };
  },

  async speech(config) {
    const adapter = createWorkersAiTts(MODELS.speech, config);
    const result = await generateSpeech({ adapter, text: "Hello from Ember." });
    return { audio: result.audio, format: result.format };
  },

  // MeloTTS's input is {prompt, lang}: the adapter always sends `text`, so `prompt` goes in
  // through modelOptions (spread into the model input).
  async melotts(config) {
    const adapter = createWorkersAiTts(MODELS.melotts, config);
    const text = "Hello from Ember.";
    const result = await generateSpeech({ adapter, text, modelOptions: { prompt: text } });
    return { audio: result.audio, format: result.format };
  },

  async summarize(config) {
    const adapter = createWorkersAiSummarize(MODELS.summarize, config);
    const result = await summarize({ adapter, text: SUMMARY_SOURCE, maxLength: 60 });
    return { summary: result.summary };
  },
};
