//! `InferError`: every way a `run()` can fail, as plain data. Only the HTTP layer turns these into
//! status codes and Workers AI error codes.

/// A failed run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferError {
    /// The model id is neither in the catalog nor an alias of a catalog model.
    #[error("No such model {0} or task")]
    NoSuchModel(String),
    /// The model is in the catalog but its files are not in the model cache; `memory_gb` is what
    /// it needs to run, where the catalog says (large models).
    #[error("Model {model} is not installed; run `ember models pull {model}`{}", memory_note(.memory_gb))]
    NotInstalled {
        model: String,
        memory_gb: Option<f32>,
    },
    /// The input does not match the task's schema; `field` is a JSON pointer such as `/messages/0/role`.
    #[error("Bad input at '{field}': {problem}")]
    InvalidInput { field: String, problem: String },
    /// A binary input sent as a string is not base64; the field is a JSON pointer.
    #[error("Invalid data type for base64 input: {0} is not base64")]
    InvalidData(String),
    /// The input is well-formed but the model cannot take it (e.g. longer than its context).
    #[error("{0}")]
    ModelInputRejected(String),
    /// The request body is larger than Ember accepts.
    #[error("Request is too large")]
    TooLarge,
    /// The run did not finish within the request timeout.
    #[error("Request timeout")]
    Timeout,
    /// The run was stopped before it finished (server shutting down).
    #[error("Request was aborted")]
    Aborted,
    /// The model's queue is full.
    #[error("Capacity temporarily exceeded, please try again.")]
    Overloaded,
    /// The model failed to load.
    #[error("Model {model} failed to load: {reason}")]
    LoadFailed { model: String, reason: String },
    /// A fault inside Ember or an engine; details go to the log, not to the client.
    #[error("internal error: {0}")]
    Internal(String),
}

impl InferError {
    /// `spec`'s files are not in the model cache.
    pub fn not_installed(spec: &crate::catalog::ModelSpec) -> InferError {
        InferError::NotInstalled {
            model: spec.id.clone(),
            memory_gb: spec.memory_gb,
        }
    }

    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> InferError {
        InferError::InvalidInput {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

fn memory_note(memory_gb: &Option<f32>) -> String {
    memory_gb
        .map(|gb| format!(" (it needs about {gb} GB of memory to run)"))
        .unwrap_or_default()
}
