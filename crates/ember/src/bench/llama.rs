//! llama.cpp's side of the kernel rows, its batched decode rate (the serving rows' ceiling), and
//! where its tools come from: `llama-bench`, `llama-batched-bench` and `llama-server` are built by
//! `scripts/bench/build-llama-tools.sh` (cached outside the clone) unless `--llama-bin` names a
//! folder holding them.

use super::kernel::{DECODE_DEPTHS, DECODE_TOKENS, KernelSamples, PREFILL_TOKENS};
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The folder with llama.cpp's tools: `given`, or the build script's output.
pub fn tools_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    let dir = match given {
        Some(dir) => dir,
        None => super::setup_script("build-llama-tools.sh")
            .context("pass --llama-bin with llama-bench, llama-batched-bench and llama-server")?,
    };
    for tool in ["llama-bench", "llama-batched-bench", "llama-server"] {
        if !dir.join(tool).is_file() {
            bail!("{} has no {tool}", dir.display());
        }
    }
    Ok(dir)
}

#[derive(Deserialize)]
struct Test {
    n_prompt: u32,
    n_gen: u32,
    n_depth: u32,
    samples_ts: Vec<f64>,
}

/// One sample of every kernel row from `llama-bench` (after its own warm-up), added to `samples`.
pub fn kernel(bin: &Path, gguf: &Path, threads: u32, samples: &mut KernelSamples) -> Result<()> {
    let (prefill_lengths, depths) = (list(&PREFILL_TOKENS), list(&DECODE_DEPTHS));
    let decode_tokens = DECODE_TOKENS.to_string();
    let prefill = run_bench(
        bin,
        gguf,
        threads,
        &["-p", prefill_lengths.as_str(), "-n", "0"],
    )?;
    let decode = run_bench(
        bin,
        gguf,
        threads,
        &[
            "-p",
            "0",
            "-n",
            decode_tokens.as_str(),
            "-d",
            depths.as_str(),
        ],
    )?;
    for test in prefill.iter().chain(&decode) {
        let Some(&rate) = test.samples_ts.first() else {
            bail!("llama-bench reported no samples");
        };
        let rows = match (test.n_prompt, test.n_gen) {
            (n, 0) => samples.prefill.entry(n),
            (0, _) => samples.decode.entry(test.n_depth),
            _ => bail!("unexpected llama-bench test"),
        };
        rows.or_default().push(rate);
    }
    Ok(())
}

/// llama.cpp's own decode rate with `sequences` sequences at once, each in a stream of
/// `ctx_per_sequence` cells as `llama-server -np` has them, after a `prompt_tokens` prompt each:
/// `llama-batched-bench`'s tokens per second while all generate `generated` tokens in lockstep.
/// A server reaches at most this, less the time its prompts and its requests' turnarounds take.
pub fn batched_decode(
    bin: &Path,
    gguf: &Path,
    threads: u32,
    sequences: u32,
    ctx_per_sequence: u32,
    prompt_tokens: u32,
    generated: u32,
) -> Result<f64> {
    let output = Command::new(bin.join("llama-batched-bench"))
        .arg("-m")
        .arg(gguf)
        .args(["-t", &threads.to_string(), "-tb", &threads.to_string()])
        .args(["-c", &(ctx_per_sequence * sequences).to_string()])
        .args(["-b", "2048", "-ub", "512", "--no-kv-unified"])
        .args(["-npp", &prompt_tokens.to_string()])
        .args(["-ntg", &generated.to_string()])
        .args(["-npl", &sequences.to_string()])
        .args(["--output-format", "jsonl"])
        .output()
        .context("running llama-batched-bench")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "llama-batched-bench failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    #[derive(Deserialize)]
    struct Measured {
        speed_tg: f64,
    }
    let line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .context("llama-batched-bench printed no result")?;
    let measured: Measured = serde_json::from_str(line).context("reading llama-batched-bench")?;
    Ok(measured.speed_tg)
}

fn list(values: &[u32]) -> String {
    let strings: Vec<String> = values.iter().map(u32::to_string).collect();
    strings.join(",")
}

fn run_bench(bin: &Path, gguf: &Path, threads: u32, tests: &[&str]) -> Result<Vec<Test>> {
    let mut command = Command::new(bin.join("llama-bench"));
    command
        .arg("-m")
        .arg(gguf)
        .args(["-t", &threads.to_string()])
        .args(["-r", "1"])
        .args(["-o", "json"])
        .args(tests)
        .stderr(Stdio::piped());
    let output = command.output().context("running llama-bench")?;
    if !output.status.success() {
        bail!(
            "llama-bench failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("reading llama-bench's JSON")
}
