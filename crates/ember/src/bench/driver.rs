//! An anchor runtime's side of a bench, run by a Python driver script (`scripts/bench/*_driver.py`)
//! that loads its model once, answers `{"ready": true}`, then times each request it reads on stdin
//! (one JSON object per line) and answers on stdout, one line each.

use anyhow::{Context, Result, ensure};
use serde::de::DeserializeOwned;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

pub struct Driver {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Driver {
    /// Starts `python scripts/bench/<script> args...` and waits until its model is loaded.
    pub fn start(python: &Path, script: &str, args: &[&std::ffi::OsStr]) -> Result<Driver> {
        let driver = repo_file(&format!("scripts/bench/{script}"))?;
        let mut child = Command::new(python)
            .arg(&driver)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", python.display()))?;
        let stdin = child.stdin.take().context("driver stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("driver stdout")?);
        let mut ready = String::new();
        stdout.read_line(&mut ready)?;
        ensure!(ready.contains("ready"), "{script} did not start: {ready}");
        Ok(Driver {
            child,
            stdin,
            stdout,
        })
    }

    /// Sends one request and reads its answer.
    pub fn ask<T: DeserializeOwned>(&mut self, request: &serde_json::Value) -> Result<T> {
        writeln!(self.stdin, "{request}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        serde_json::from_str(&line).with_context(|| format!("the driver answered {line:?}"))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file of this repository (the bench runs from a clone).
pub fn repo_file(relative: &str) -> Result<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative);
    ensure!(path.is_file(), "{} is missing", path.display());
    Ok(path)
}
