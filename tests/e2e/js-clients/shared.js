// What the Node tests (test/) and the Worker (worker/src/) both use: the models, the structured
// output schema and the tool of the round trips. No Node APIs here, so wrangler can bundle it.
import { tool } from "ai";
import { z } from "zod";

// Ember aliases this id to a local Qwen2.5-Coder-0.5B (tools and JSON schemas by constrained decoding).
export const CHAT_MODEL = "@cf/meta/llama-3.1-8b-instruct";
// Tool round trips: the 0.5B model calls the tool again after seeing its result, so these use the
// 1.5B, greedy, with a system prompt that says when to stop calling.
export const TOOL_MODEL = "@hf/qwen/qwen2.5-coder-1.5b-instruct";
export const EMBED_MODEL = "@cf/google/embeddinggemma-300m";
// Workers AI's chat-completions family: OpenAI's shapes even on /ai/run (Ember: its stand-in, the 0.5B).
export const CHAT_COMPLETIONS_MODEL = "@cf/google/gemma-4-26b-a4b-it";

export const profileSchema = z.object({
  name: z.string(),
  age: z.number().int(),
  hobbies: z.array(z.string()),
});

/** The `add` tool; each call's input is pushed to `executed`, when given. */
export function addTool(executed) {
  return tool({
    description: "Add two integers and return their sum.",
    inputSchema: z.object({ a: z.number(), b: z.number() }),
    execute: async ({ a, b }) => {
      executed?.push({ a, b });
      return { sum: a + b };
    },
  });
}
