// A Hono router using env.AI: sentiment of a text, and a failing run whose error reaches the client.
import { Hono } from "hono";

type Bindings = { AI: { run(model: string, inputs: object): Promise<any> } };

const app = new Hono<{ Bindings: Bindings }>();

app.onError((err, c) => c.json({ name: err.name, message: err.message }, 500));

app.get("/", (c) => c.text("ok"));

app.post("/sentiment", async (c) => {
  const { text } = await c.req.json<{ text: string }>();
  const labels: { label: string; score: number }[] = await c.env.AI.run("@cf/huggingface/distilbert-sst-2-int8", { text });
  const best = labels.reduce((a, b) => (b.score > a.score ? b : a));
  return c.json({ label: best.label, labels });
});

// No `text`: the model's input is invalid, and the binding throws Ember's error.
app.get("/invalid", async (c) => c.json(await c.env.AI.run("@cf/huggingface/distilbert-sst-2-int8", {})));

export default app;
