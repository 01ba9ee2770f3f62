//! Decoding steps of concurrent transcriptions, run together: each transcription's thread
//! hands its step (one token per sequence, its cache, its window) to the queue, and whichever
//! thread finds no pass running takes every step waiting, its own among them, through one
//! `Model::decode_many` and the output projection. A step's cost is reading the decoder's
//! weights, so eight transcriptions stepping together read them once instead of eight times.
//! Nothing waits for company: a step alone runs at once, and the steps that arrive during a
//! pass make the next one.

use super::model::{CrossKv, DecodeCall, Model, SelfKv};
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};

/// The logits of a step's sequences (rows) and the cache that now holds the step's tokens.
type Stepped = Result<(Vec<Vec<f32>>, SelfKv), String>;

#[derive(Default)]
pub(crate) struct StepQueue {
    state: Mutex<State>,
    finished: Condvar,
}

#[derive(Default)]
struct State {
    waiting: Vec<Waiting>,
    running: bool,
    results: HashMap<u64, Stepped>,
    next_id: u64,
}

struct Waiting {
    id: u64,
    tokens: Vec<u32>,
    cache: SelfKv,
    cross: CrossKv,
}

impl StepQueue {
    /// Runs one token per sequence of `cache` through the decoder (with whatever other steps
    /// are waiting) and returns each sequence's logits.
    pub(crate) fn step(
        &self,
        model: &Model,
        cache: &mut SelfKv,
        tokens: &[u32],
        cross: &CrossKv,
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.waiting.push(Waiting {
            id,
            tokens: tokens.to_vec(),
            cache: cache.clone(),
            cross: cross.clone(),
        });
        loop {
            if let Some(stepped) = state.results.remove(&id) {
                let (logits, stepped_cache) = stepped.map_err(anyhow::Error::msg)?;
                *cache = stepped_cache;
                return Ok(logits);
            }
            if state.running {
                state = self.finished.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            state.running = true;
            let mut pass = Pass {
                queue: self,
                steps: std::mem::take(&mut state.waiting),
                results: None,
            };
            drop(state);
            pass.results = Some(run(model, &mut pass.steps));
            drop(pass);
            state = self.lock();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The steps one thread is running. Dropped, it hands each its result, or an error where the
/// pass never finished (a panic in the model), so no waiting thread waits forever.
struct Pass<'a> {
    queue: &'a StepQueue,
    steps: Vec<Waiting>,
    results: Option<Result<Vec<Vec<Vec<f32>>>, String>>,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        let results = self
            .results
            .take()
            .unwrap_or_else(|| Err("a decoding step panicked".into()));
        let steps = std::mem::take(&mut self.steps);
        match results {
            Ok(logits) => {
                for (step, logits) in steps.into_iter().zip(logits) {
                    state.results.insert(step.id, Ok((logits, step.cache)));
                }
            }
            Err(why) => {
                for step in steps {
                    state.results.insert(step.id, Err(why.clone()));
                }
            }
        }
        state.running = false;
        self.queue.finished.notify_all();
    }
}

/// One pass over `steps`: per step, its sequences' logits.
fn run(model: &Model, steps: &mut [Waiting]) -> Result<Vec<Vec<Vec<f32>>>, String> {
    let mut calls: Vec<DecodeCall<'_>> = steps
        .iter_mut()
        .map(|step| DecodeCall {
            tokens: &step.tokens,
            batch: step.tokens.len(),
            cache: &mut step.cache,
            cross: &step.cross,
            heads: &[],
        })
        .collect();
    let decoded = model
        .decode_many(&mut calls)
        .map_err(|e| format!("decoding step: {e}"))?;
    let hidden: Vec<_> = decoded.into_iter().map(|(hidden, _)| hidden).collect();
    let mut logits = model
        .logits(&candle_core::Tensor::cat(&hidden, 0).map_err(|e| e.to_string())?)
        .map_err(|e| format!("output projection: {e}"))?
        .into_iter();
    Ok(steps
        .iter()
        .map(|step| logits.by_ref().take(step.tokens.len()).collect())
        .collect())
}
