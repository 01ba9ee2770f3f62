//! OpenAI's Responses API and Anthropic's Messages API in-process, on the real SmolLM2: the
//! objects and their streamed events, stored responses and `previous_response_id`, and every bad
//! input named in the API's own error shape.

mod common;

use common::*;
use serde_json::{Value, json};

const RESPONSES: &str = "/v1/responses";
const MESSAGES: &str = "/v1/messages";

/// Parses `event: name\ndata: {...}` events.
fn named_events(body: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(body).unwrap();
    text.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            let (name, data) = event.split_once('\n').expect("event and data lines");
            let name = name
                .strip_prefix("event: ")
                .expect("an event line")
                .to_string();
            let data = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            (name, data)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_is_kept_and_continued() {
    let app = app();
    let body = json!({"model": SMOL, "instructions": "Be brief.", "input": "Say hello.",
                      "max_output_tokens": 8, "temperature": 0});
    let reply = send(&app, post(RESPONSES, body.to_string())).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let first = reply.json();
    assert!(first["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(
        (first["object"].clone(), first["instructions"].clone()),
        (json!("response"), json!("Be brief."))
    );
    let message = &first["output"][0];
    assert_eq!(
        (message["type"].as_str(), message["role"].as_str()),
        (Some("message"), Some("assistant"))
    );
    assert!(!message["content"][0]["text"].as_str().unwrap().is_empty());
    let usage = &first["usage"];
    assert_eq!(
        usage["total_tokens"],
        usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap()
    );

    let id = first["id"].as_str().unwrap();
    let kept = send(&app, get(&format!("{RESPONSES}/{id}"))).await.json();
    assert_eq!(kept, first);
    let next = json!({"model": SMOL, "input": "Again.", "previous_response_id": id, "max_output_tokens": 4});
    let next = send(&app, post(RESPONSES, next.to_string())).await.json();
    let alone = json!({"model": SMOL, "input": "Again.", "max_output_tokens": 4});
    let alone = send(&app, post(RESPONSES, alone.to_string())).await.json();
    assert!(
        next["usage"]["input_tokens"].as_u64() > alone["usage"]["input_tokens"].as_u64(),
        "the continued conversation is longer: {next} {alone}"
    );
    let deleted = send(
        &app,
        axum::http::Request::delete(format!("{RESPONSES}/{id}"))
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(deleted.json()["deleted"], true);
    let gone = send(&app, get(&format!("{RESPONSES}/{id}"))).await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_response_numbers_its_events_and_ends_complete() {
    let app = app();
    let body = json!({"model": SMOL, "input": "Count to three.", "max_output_tokens": 12, "stream": true, "store": false});
    let reply = send(&app, post(RESPONSES, body.to_string())).await;
    assert_eq!(reply.status, 200);
    let events = named_events(&reply.body);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        &names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    let last = names.last().unwrap();
    assert!(
        ["response.completed", "response.incomplete"].contains(last),
        "{names:?}"
    );
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(
            (data["type"].as_str(), data["sequence_number"].as_u64()),
            (Some(name.as_str()), Some(i as u64))
        );
    }
    let deltas: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    let final_text =
        events.last().unwrap().1["response"]["output"][0]["content"][0]["text"].clone();
    assert_eq!(json!(deltas), final_text);
    let id = events[0].1["response"]["id"].as_str().unwrap();
    assert_eq!(
        send(&app, get(&format!("{RESPONSES}/{id}"))).await.status,
        404,
        "store: false"
    );
}

#[tokio::test]
async fn bad_responses_requests_name_their_field() {
    let app = app();
    let cases = [
        (json!({"model": SMOL}), 400, "input"),
        (json!({"model": SMOL, "input": 7}), 400, "input"),
        (
            json!({"model": SMOL, "input": [{"role": "wizard", "content": "hi"}]}),
            400,
            "input[0].role",
        ),
        (
            json!({"model": SMOL, "input": [{"type": "file_search_call"}]}),
            400,
            "input[0].type",
        ),
        (
            json!({"model": SMOL, "input": "hi", "tools": [{"type": "web_search_preview"}]}),
            400,
            "tools[0].type",
        ),
        (
            json!({"model": SMOL, "input": "hi", "text": {"format": {"type": "xml"}}}),
            400,
            "text.format.type",
        ),
        (
            json!({"model": SMOL, "input": "hi", "max_output_tokens": 0}),
            400,
            "max_output_tokens",
        ),
        (
            json!({"model": SMOL, "input": "hi", "previous_response_id": "resp_nope"}),
            404,
            "",
        ),
        (json!({"model": "@cf/no/such", "input": "hi"}), 404, ""),
    ];
    for (body, status, param) in cases {
        let reply = send(&app, post(RESPONSES, body.to_string())).await;
        assert_eq!(reply.status.as_u16(), status, "{body}: {:?}", reply.body);
        let error = &reply.json()["error"];
        if !param.is_empty() {
            assert_eq!(error["param"], param, "{body}: {error}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_and_its_stream() {
    let app = app();
    let body = json!({"model": SMOL, "max_tokens": 8, "system": "Be brief.",
                      "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}]});
    let reply = send(&app, post(MESSAGES, body.to_string())).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let message = reply.json();
    assert_eq!(
        (message["type"].as_str(), message["role"].as_str()),
        (Some("message"), Some("assistant"))
    );
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(message["content"][0]["type"], "text");
    assert!(["end_turn", "max_tokens"].contains(&message["stop_reason"].as_str().unwrap()));
    assert!(message["usage"]["input_tokens"].as_u64().unwrap() > 0);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let reply = send(&app, post(MESSAGES, streamed.to_string())).await;
    let events = named_events(&reply.body);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        &names[..3],
        ["message_start", "ping", "content_block_start"]
    );
    assert_eq!(
        &names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    for (name, data) in &events {
        assert_eq!(data["type"].as_str(), Some(name.as_str()));
    }
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap())
        .collect();
    assert!(!text.is_empty());
    let delta = &events[names.len() - 2].1;
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn bad_messages_are_anthropic_errors_naming_their_field() {
    let app = app();
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (json!({"model": SMOL, "messages": user}), 400, "max_tokens"),
        (json!({"model": SMOL, "max_tokens": 8}), 400, "messages"),
        (
            json!({"model": SMOL, "max_tokens": 8, "messages": [{"role": "system", "content": "x"}]}),
            400,
            "messages[0].role",
        ),
        (
            json!({"model": SMOL, "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "video"}]}]}),
            400,
            "messages[0].content[0].type",
        ),
        (
            json!({"model": SMOL, "max_tokens": 8, "messages": user, "tool_choice": {"type": "maybe"}}),
            400,
            "tool_choice",
        ),
        (
            json!({"model": SMOL, "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "http://x"}}]}]}),
            400,
            "messages[0].content[0].source.type",
        ),
        (
            json!({"model": "@cf/no/such", "max_tokens": 8, "messages": user}),
            404,
            "",
        ),
    ];
    for (body, status, field) in cases {
        let reply = send(&app, post(MESSAGES, body.to_string())).await;
        assert_eq!(reply.status.as_u16(), status, "{body}: {:?}", reply.body);
        let error = reply.json();
        assert_eq!(error["type"], "error", "{error}");
        let kind = if status == 404 {
            "not_found_error"
        } else {
            "invalid_request_error"
        };
        assert_eq!(error["error"]["type"], kind, "{error}");
        assert!(
            error["error"]["message"].as_str().unwrap().contains(field),
            "{body}: {error}"
        );
    }
    let not_json = send(&app, post(MESSAGES, "{")).await;
    assert_eq!(not_json.json()["error"]["type"], "invalid_request_error");
}
