//! Ember's core: the model catalog, the Workers AI task inputs and outputs, the runner traits that
//! engines implement, and the in-process `run()` API that the CLI and the HTTP server share.
//! No HTTP, no model kernels, no SQL live here.

pub mod admission;
pub mod catalog;
pub mod ember;
pub mod error;
pub mod finetunes;
pub mod guard;
pub mod installed;
pub mod metrics;
pub mod runner;
mod standin;
pub mod tasks;
pub mod tools;

pub use catalog::{Catalog, ModelSpec, Task};
pub use ember::{Ember, MemoryLimits, Run, RunOptions, RunOutput, Target, TaskRun};
pub use error::InferError;
