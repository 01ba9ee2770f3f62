//! The `ember` binary as a user runs it: `run` in-process (JSON and streamed), `models list`,
//! `models pull` on an installed model (verifies, downloads nothing), and `serve` refusing to
//! expose an unauthenticated server beyond loopback. Needs the default models installed.

use std::process::Command;

fn ember(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .env("EMBER_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn run_prints_the_result_object() {
    let output = ember(&[
        "run",
        "@hf/qwen/qwen2.5-coder-0.5b-instruct",
        "--input",
        r#"{"messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0, "max_tokens": 16}"#,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["response"], "The capital of France is Paris.");
    assert_eq!(result["usage"]["completion_tokens"], 7);
}

#[test]
fn run_streams_text_and_reports_usage() {
    let output = ember(&[
        "run",
        "@hf/huggingfacetb/smollm2-135m-instruct",
        "--input",
        r#"{"prompt": "The capital of France is", "raw": true, "temperature": 0, "max_tokens": 8}"#,
        "--stream",
    ]);
    assert!(output.status.success());
    assert!(
        String::from_utf8(output.stdout)
            .unwrap()
            .starts_with(" Paris.")
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("\"completion_tokens\":8"));
}

#[test]
fn run_reports_bad_input_and_unknown_models() {
    let output = ember(&["run", "@cf/nobody/nothing", "--input", "{}"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("No such model @cf/nobody/nothing"));
    let output = ember(&[
        "run",
        "@hf/huggingfacetb/smollm2-135m-instruct",
        "--input",
        r#"{"prompt": 1}"#,
    ]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("/prompt"));
}

#[test]
fn models_list_and_pull_of_an_installed_model() {
    let output = ember(&["models", "list"]);
    let text = String::from_utf8(output.stdout).unwrap();
    let minilm = text
        .lines()
        .find(|l| l.starts_with("@hf/sentence-transformers/all-minilm-l6-v2"))
        .unwrap();
    assert!(minilm.contains(" yes "), "{minilm}");
    assert!(text.contains("@cf/meta/llama-3.1-8b-instruct"));

    // Already installed: verified against the catalog sha256 without touching the network.
    let output = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "models",
            "pull",
            "@hf/sentence-transformers/all-minilm-l6-v2",
        ])
        .env("EMBER_PYPI_INDEX", "http://127.0.0.1:1/simple")
        .env("HF_ENDPOINT", "http://127.0.0.1:1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("already installed"));
}

#[test]
fn serve_refuses_to_listen_beyond_loopback_without_a_token() {
    let output = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env_remove("EMBER_API_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("without an API token"));
}
