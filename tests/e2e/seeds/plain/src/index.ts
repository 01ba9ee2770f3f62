// A plain fetch handler using env.AI: /ask runs a prompt, /raw the same with returnRawResponse.
interface Env {
  AI: { run(model: string, inputs: object, options?: object): Promise<any> };
}

const MODEL = "@cf/meta/llama-3.1-8b-instruct";

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    const url = new URL(request.url);
    const prompt = url.searchParams.get("q") ?? "Say hello.";
    try {
      if (url.pathname === "/") return new Response("ok");
      if (url.pathname === "/ask") {
        return Response.json(await env.AI.run(MODEL, { prompt, max_tokens: 16 }));
      }
      if (url.pathname === "/raw") {
        // The binding hands back Ember's own Response, untouched.
        const res: Response = await env.AI.run(MODEL, { prompt, max_tokens: 8 }, { returnRawResponse: true });
        return new Response(res.body, {
          status: res.status,
          headers: {
            "content-type": res.headers.get("content-type") ?? "",
            "x-raw-is-response": String(res instanceof Response),
            "x-cf-ai-req-id": res.headers.get("cf-ai-req-id") ?? "",
          },
        });
      }
      return new Response("not found", { status: 404 });
    } catch (e: any) {
      return Response.json({ name: e?.name, message: e?.message ?? String(e) }, { status: 500 });
    }
  },
};
