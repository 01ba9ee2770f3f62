// Streams env.AI.run(..., {stream: true}) straight back to the client as text/event-stream.
interface Env {
  AI: { run(model: string, inputs: object, options?: object): Promise<ReadableStream> };
}

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    if (request.method !== "POST") return new Response("ok");
    const { messages, gateway } = (await request.json()) as { messages: unknown[]; gateway?: string };
    const options = gateway ? { gateway: { id: gateway } } : {};
    const stream = await env.AI.run("@cf/meta/llama-3.1-8b-instruct", { messages, stream: true, max_tokens: 24 }, options);
    return new Response(stream, { headers: { "content-type": "text/event-stream" } });
  },
};
