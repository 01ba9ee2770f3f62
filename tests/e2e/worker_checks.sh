# The checks on tests/e2e/worker, shared by run_worker_test.sh (wrangler 4.44, AI proxied through
# CLOUDFLARE_API_BASE_URL) and run_wrangler_plugin_test.sh (newer wranglers, AI through the
# wrangler-ember plugin): the same Worker code must give the same answers either way.
# Source e2e_lib.sh first; needs HERE (tests/e2e), EMBER_URL, ACCOUNT_ID (Ember's account, "local"
# in dev mode), EMBER_TOKEN if Ember has accounts, and a Worker answering at $BASE.

run_worker_checks() {
  CHAT='{"messages":[{"role":"system","content":"You are a helpful assistant. Answer briefly."},{"role":"user","content":"Write a Python function that adds two numbers."}]}'

  # ---------------------------------------------------------------- /chat
  request POST /chat "$CHAT"
  check "/chat returns {response, usage}" '
    if (status !== "200") return "status " + status;
    const j = JSON.parse(body);
    if (typeof j.response !== "string" || !j.response.trim()) return "no non-empty response string";
    if (!j.usage || typeof j.usage !== "object") return "no usage object";
    return true;'
  check "/chat: binding saw cf-ai-req-id (AI.lastRequestId)" '
    const id = headers["x-last-request-id"];
    return (id && id !== "null" && id !== "undefined") ? true : "x-last-request-id empty: Ember sent no cf-ai-req-id header";'

  # ---------------------------------------------------------------- /chat/stream
  request POST /chat/stream "$CHAT"
  check "/chat/stream is SSE with response events, text, usage and [DONE]" '
    if (status !== "200") return "status " + status;
    if (!(headers["content-type"] || "").startsWith("text/event-stream")) return "content-type " + headers["content-type"];
    const data = body.split(/\r?\n/).filter(l => l.startsWith("data:")).map(l => l.slice(5).trim());
    if (!data.length) return "no data: lines";
    if (data[data.length - 1] !== "[DONE]") return "last event is not [DONE]: " + data[data.length - 1];
    if (!body.includes("data: {\"response\"")) return "no data: {\"response\" events";
    const ev = data.slice(0, -1).map(d => JSON.parse(d));
    const text = ev.map(e => typeof e.response === "string" ? e.response : "").join("");
    if (!text.trim()) return "concatenated text is empty";
    if (!ev.some(e => e.usage && typeof e.usage === "object")) return "no usage event";
    return true;'

  # ---------------------------------------------------------------- /embed
  request POST /embed '{"text":"Ember runs Workers AI models locally."}'
  check "/embed returns shape [1,768] and 768 floats" '
    if (status !== "200") return "status " + status;
    const j = JSON.parse(body);
    if (JSON.stringify(j.shape) !== "[1,768]") return "shape " + JSON.stringify(j.shape);
    if (!Array.isArray(j.data) || j.data.length !== 1 || !Array.isArray(j.data[0])) return "data is not [[...]]";
    const v = j.data[0];
    if (v.length !== 768) return "vector length " + v.length;
    if (!v.every(x => typeof x === "number" && Number.isFinite(x))) return "non-finite or non-number entries";
    if (v.every(x => x === 0)) return "all-zero vector";
    return true;'

  # ---------------------------------------------------------------- /run: the text tasks
  request POST /run '{"model":"@cf/huggingface/distilbert-sst-2-int8","inputs":{"text":"I love this movie"}}'
  check "/run classification: both labels, POSITIVE wins, scores sum to 1" '
    if (status !== "200") return "status " + status;
    const j = JSON.parse(body);
    if (!Array.isArray(j) || j.length !== 2) return "not two labels";
    const p = j.find(l => l.label === "POSITIVE"), n = j.find(l => l.label === "NEGATIVE");
    if (!p || !n) return "labels " + JSON.stringify(j);
    if (Math.abs(p.score + n.score - 1) > 1e-4) return "scores do not sum to 1";
    return p.score > n.score ? true : "POSITIVE lost";'
  request POST /run '{"model":"@cf/baai/bge-reranker-base","inputs":{"query":"Which planet is the Red Planet?","contexts":[{"text":"Venus is hot."},{"text":"Mars is the Red Planet."}],"top_k":1}}'
  check "/run reranking: {response: [{id, score}]}, the relevant passage first" '
    if (status !== "200") return "status " + status;
    const j = JSON.parse(body);
    if (!Array.isArray(j.response) || j.response.length !== 1) return "response " + JSON.stringify(j);
    return j.response[0].id === 1 && typeof j.response[0].score === "number" ? true : JSON.stringify(j);'
  request POST /run '{"model":"@cf/meta/m2m100-1.2b","inputs":{"text":"Thank you very much.","target_lang":"spanish"}}'
  check "/run translation: {translated_text}" '
    if (status !== "200") return "status " + status;
    const j = JSON.parse(body);
    return typeof j.translated_text === "string" && /gracias/i.test(j.translated_text) ? true : JSON.stringify(j);'
  request POST /run '{"model":"@cf/facebook/bart-large-cnn","inputs":{"input_text":"The museum reopened on Monday after a two-year renovation that cost 40 million euros. Visitors queued for hours to see the restored paintings.","max_length":60}}'
  check "/run summarization: {summary}" '
    if (status !== "200") return "status " + status;
    const j = JSON.parse(body);
    return typeof j.summary === "string" && j.summary.trim().length > 0 ? true : JSON.stringify(j);'
  request POST /run '{"model":"@cf/meta/m2m100-1.2b","inputs":{"text":"hi","target_lang":"klingon"}}'
  check "/run translation of an unknown language: binding threw 5006 naming target_lang" '
    if (status !== "500") return "status " + status;
    const j = JSON.parse(body);
    return String(j.message).includes("5006") && String(j.message).includes("target_lang") ? true : j.message;'

  # ---------------------------------------------------------------- speech: binary inputs
  SPEECH="$HERE/../../crates/ember-engines/tests/fixtures/whisper/short.wav"
  request POST /transcribe/bytes "@$SPEECH"
  check "/transcribe/bytes: whisper-tiny-en on {audio: [bytes]} gives {text, word_count, words, vtt}" '
    if (status !== "200") return "status " + status;
    const j = JSON.parse(body);
    if (!/lazy dog/i.test(j.text)) return "text " + j.text;
    if (j.word_count !== j.words.length) return "word_count " + j.word_count;
    return j.vtt.startsWith("WEBVTT") ? true : "vtt " + j.vtt;'
  request POST /transcribe/stream "@$SPEECH"
  check "/transcribe/stream: whisper-large-v3-turbo on {audio: {body: stream}} gives segments" '
    if (status !== "200") return "status " + status;
    const j = JSON.parse(body);
    if (!/lazy dog/i.test(j.text)) return "text " + j.text;
    if (j.transcription_info.language !== "en") return "language " + j.transcription_info.language;
    return Array.isArray(j.segments) && j.segments.length > 0 ? true : "segments " + JSON.stringify(j.segments);'

  # ---------------------------------------------------------------- async batch
  request POST /batch '{"texts":["first queued text","second queued text"]}'
  check "/batch: {queueRequest: true} queues the requests, polling with the request_id gives their results" '
    if (status !== "200") return "status " + status;
    const j = JSON.parse(body);
    if (j.queued.status !== "queued" || !j.queued.request_id) return "queued " + JSON.stringify(j.queued);
    const r = j.done.responses;
    if (!Array.isArray(r) || r.length !== 2) return "responses " + JSON.stringify(j.done);
    if (r[1].id !== 1 || r[1].external_reference !== "ref-1" || r[1].success !== true) return JSON.stringify(r[1]);
    return r.every(x => x.result.data[0].length === 768) && j.done.usage.prompt_tokens > 0 ? true : JSON.stringify(j.done.usage);'

  # ---------------------------------------------------------------- images: binary inputs
  CAT="$HERE/../../crates/ember-engines/tests/fixtures/vision/images/cat.png"
  request POST /classify "@$CAT"
  check "/classify: resnet-50 on {image: [bytes]} gives five [{label, score}], a cat first" '
    if (status !== "200") return "status " + status;
    const j = JSON.parse(body);
    if (!Array.isArray(j) || j.length !== 5) return JSON.stringify(j);
    return /cat/.test(j[0].label) && typeof j[0].score === "number" ? true : JSON.stringify(j);'

  request POST /detect "@$HERE/../../crates/ember-engines/tests/fixtures/vision/images/espresso.png"
  check "/detect: detr-resnet-50 on {image: [bytes]} gives [{label, score, box}], a cup first" '
    if (status !== "200") return "status " + status;
    const j = JSON.parse(body);
    if (!Array.isArray(j) || j.length === 0) return JSON.stringify(j);
    const b = j[0].box || {};
    return j[0].label === "cup" && typeof j[0].score === "number" && b.xmin < b.xmax && b.ymin < b.ymax ? true : JSON.stringify(j);'

  # The check wants its first run uncached, but another run of this list within the Worker's
  # cacheTtl (60 s) left the answer in Ember's cache. Deleting the gateway drops its cache and
  # logs; the binding's next use creates `default` again, as on a fresh Ember.
  curl -s -o /dev/null --max-time 30 -X DELETE -H "Authorization: Bearer ${EMBER_TOKEN:-dummy}" \
    "$EMBER_URL/client/v4/accounts/${ACCOUNT_ID:-local}/ai-gateway/gateways/default"
  request POST /gateway '{}'
  check "/gateway: two runs through AI Gateway, the second cached; feedback, getLog and getUrl through env.AI.gateway()" '
    if (status !== "200") return "status " + status;
    const j = JSON.parse(body);
    if (JSON.stringify(j.first) !== JSON.stringify(j.second)) return "the cached result differs";
    if (!j.firstLogId || !j.secondLogId || j.firstLogId === j.secondLogId) return "log ids " + j.firstLogId + " " + j.secondLogId;
    if (j.firstLog.cached !== false || j.secondLog.cached !== true) return "cached flags " + j.firstLog.cached + " " + j.secondLog.cached;
    if (j.firstLog.feedback !== 1 || j.firstLog.score !== 80) return "feedback not kept: " + JSON.stringify(j.firstLog);
    if (j.firstLog.metadata !== "{\"suite\":\"e2e\"}") return "metadata " + j.firstLog.metadata;
    if (j.missing !== "AiGatewayLogNotFound") return "a missing log threw " + j.missing;
    return j.url.endsWith("/v1/'"${ACCOUNT_ID:-local}"'/default/workers-ai") ? true : "url " + j.url;'
  request POST /see "@$CAT"
  check "/see: an image_url part through the binding gives llama-mtmd-cli's text" '
    if (status !== "200") return "status " + status;
    const j = JSON.parse(body);
    return j.response === " flo flo arith rictu next smictuhesxtnaangepiidid" ? true : JSON.stringify(j);'

  # ---------------------------------------------------------------- images: a binary output
  request POST /imagine
  check "/imagine: the tiny Stable Diffusion answers a 320x256 PNG through the binding" '
    if (status !== "200") return "status " + status;
    const j = JSON.parse(body);
    return j.signature && j.width === 320 && j.height === 256 ? true : JSON.stringify(j);'

  # ---------------------------------------------------------------- /models (AI.models -> GET .../ai/run/proxy)
  request GET /models
  check "/models (env.AI.models({task: \"Text Embeddings\"})) lists embeddinggemma" '
    if (status !== "200") return "status " + status;
    const j = JSON.parse(body);
    if (!Array.isArray(j)) return "not an array";
    const names = j.map(m => m && m.name);
    if (!names.includes("@cf/google/embeddinggemma-300m")) return "embeddinggemma missing: " + JSON.stringify(names);
    const bad = j.filter(m => !m.task || m.task.name !== "Text Embeddings").map(m => m.name);
    if (bad.length) return "task filter not applied: " + JSON.stringify(bad);
    return true;'

  # ---------------------------------------------------------------- /bad-model
  request GET /bad-model
  check "/bad-model: binding threw 5007" '
    if (status !== "500") return "status " + status;
    const j = JSON.parse(body);
    return String(j.message).includes("5007") ? true : "message lacks 5007: " + j.message;'
  check "/bad-model: error name is InvalidModel" '
    const j = JSON.parse(body);
    return j.name === "InvalidModel" ? true : "name is " + j.name;'
}
