//! Limits and metering, the layer between AI Gateway and the routes. Each pass of a request
//! through the routes (AI Gateway may make several) carries a `Meter`. A run route's `Call`
//! opens it, admits its run through it (the caller's per-task rate limit and a reservation of
//! what the run can cost at most, `ember_access`) and reports what the run used or why it failed;
//! the layer settles every opened meter exactly once, in the request log and the ledger: a whole
//! answer before it leaves the layer, a stream when it ends (before its last event goes out),
//! and a run whose client left, with `Aborted`, when its meter is dropped. Admission is a call
//! and not the layer's own step because what it reserves depends on the parsed request.

use crate::error::ApiError;
use crate::run::Form;
use crate::{AppState, RequestId, RunReport, batch};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use ember_access::{Access, AccessError, Admission, Caller};
use ember_core::InferError;
use ember_core::catalog::ModelSpec;
use ember_core::tasks::Usage;
use ember_store::{DAY_MS, RequestRecord};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Gives each pass through the routes its meter, and settles it once the routes answered,
/// unless a stream settles it at its end.
pub(crate) async fn layer(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let meter = Meter::new(&state, &request);
    if let Some(meter) = &meter {
        request.extensions_mut().insert(meter.clone());
    }
    let response = next.run(request).await;
    if let Some(meter) = meter {
        meter.settle_answered(response.status()).await;
    }
    response
}

/// A request's metering, shared by its route (`run::Call`) and the layer.
#[derive(Clone)]
pub(crate) struct Meter(Arc<Mutex<Metered>>);

struct Metered {
    access: Arc<Access>,
    batches: Arc<batch::Batches>,
    id: String,
    form: Form,
    caller: Caller,
    started: Instant,
    /// Where a successful run's usage is reported (for AI Gateway's log).
    report: RunReport,
    /// Whether a run route took the request: only those are settled.
    opened: bool,
    /// The model as the client named it (empty until known).
    model: String,
    /// The catalog model it resolved to (after aliases); one that served replaces it.
    served_by: Option<String>,
    admission: Option<Admission>,
    /// Counts the request as interactive from its admission to its settlement, so batches
    /// give way to it.
    interactive: Option<batch::Interactive>,
    /// What the run used, or why it failed; `None` until the route says.
    outcome: Option<Result<Usage, ApiError>>,
    /// A stream settles the request at its end, not the layer.
    streaming: bool,
    settled: bool,
}

impl Meter {
    /// A meter for an authenticated request; `None` for one that has no caller or id (the
    /// routes answer it without running anything).
    fn new(state: &AppState, request: &Request) -> Option<Meter> {
        let caller = request.extensions().get::<Caller>()?.clone();
        let request_id = request.extensions().get::<RequestId>()?;
        Some(Meter(Arc::new(Mutex::new(Metered {
            access: state.access.clone(),
            batches: state.batches.clone(),
            id: request_id.id.clone(),
            form: Form::of_path(request.uri().path()),
            caller,
            started: Instant::now(),
            report: request_id.report.clone(),
            opened: false,
            model: String::new(),
            served_by: None,
            admission: None,
            interactive: None,
            outcome: None,
            streaming: false,
            settled: false,
        }))))
    }

    fn lock(&self) -> MutexGuard<'_, Metered> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn id(&self) -> String {
        self.lock().id.clone()
    }

    pub(crate) fn form(&self) -> Form {
        self.lock().form
    }

    pub(crate) fn caller(&self) -> Caller {
        self.lock().caller.clone()
    }

    /// Marks the request as a run, to be settled; `model` as the client named it.
    pub(crate) fn open(&self, model: &str) {
        let mut metered = self.lock();
        metered.opened = true;
        metered.model = model.to_string();
    }

    /// Holds the run of `spec` to the caller's rate limit and daily allocation, reserving what
    /// it can cost at most (`estimate`).
    pub(crate) async fn admit(&self, spec: &ModelSpec, estimate: &Usage) -> Result<(), ApiError> {
        let (access, caller) = {
            let mut metered = self.lock();
            metered.opened = true;
            metered.served_by = Some(spec.id.clone());
            (metered.access.clone(), metered.caller.clone())
        };
        let admission = access
            .admit(&caller, spec, estimate.neurons)
            .await
            .map_err(|error| refusal(&access, &caller, error))?;
        let mut metered = self.lock();
        metered.admission = Some(admission);
        metered.interactive = Some(metered.batches.interactive());
        Ok(())
    }

    /// The run succeeded: `served_by` (none for a request that ran nothing) used `usage`.
    pub(crate) fn succeeded(&self, served_by: Option<&str>, usage: Usage) {
        let mut metered = self.lock();
        metered.opened = true;
        metered.served_by = served_by.map(str::to_string);
        metered.outcome = Some(Ok(usage));
    }

    /// The run failed with `error`, answered in the request's form.
    pub(crate) fn failed(&self, error: ApiError) -> Response {
        let mut metered = self.lock();
        if let ApiError::Infer(
            InferError::Internal(detail) | InferError::LoadFailed { reason: detail, .. },
        ) = &error
        {
            tracing::error!(request = %metered.id, model = metered.model, detail, "run failed");
        }
        metered.opened = true;
        metered.outcome = Some(Err(error.clone()));
        metered.form.error(&error)
    }

    /// The request ran nothing (a batch's submission or poll): the request log keeps it, the
    /// ledger does not (it skips requests that name no model).
    pub(crate) fn ran_nothing(&self) {
        let mut metered = self.lock();
        metered.opened = true;
        metered.model.clear();
        metered.served_by = None;
        metered.outcome = Some(Ok(Usage::default()));
    }

    /// Hands the settlement to a stream served by `served_by`: it calls `settle_stream` when it
    /// ends.
    pub(crate) fn streaming(&self, served_by: &str) {
        let mut metered = self.lock();
        metered.opened = true;
        metered.streaming = true;
        metered.served_by = Some(served_by.to_string());
    }

    /// Settles a stream that ended with `outcome` (the 200 went out with its headers).
    pub(crate) async fn settle_stream(&self, outcome: Result<Usage, ApiError>) {
        let settlement = {
            let mut metered = self.lock();
            metered.outcome = Some(outcome);
            metered.settlement(StatusCode::OK)
        };
        if let Some((access, admission, record)) = settlement {
            settle(access, admission, record).await;
        }
    }

    /// Settles a whole answer with `status` (the layer, once the routes answered).
    async fn settle_answered(&self, status: StatusCode) {
        let settlement = {
            let mut metered = self.lock();
            match metered.streaming {
                true => None,
                false => metered.settlement(status),
            }
        };
        if let Some((access, admission, record)) = settlement {
            settle(access, admission, record).await;
        }
    }
}

impl Metered {
    /// The row and admission to settle, once, for an opened request.
    fn settlement(
        &mut self,
        status: StatusCode,
    ) -> Option<(Arc<Access>, Option<Admission>, RequestRecord)> {
        if !self.opened || self.settled {
            return None;
        }
        self.settled = true;
        self.interactive = None;
        let outcome = self.outcome.take().unwrap_or(Ok(Usage::default()));
        let (usage, error_code) = match &outcome {
            Ok(usage) => {
                let _ = self.report.set(*usage);
                (*usage, None)
            }
            Err(error) => (Usage::default(), Some(error.kind().code)),
        };
        let record = RequestRecord {
            id: self.id.clone(),
            created_at_ms: self.access.now_ms(),
            account_id: Some(self.caller.account.id.clone()),
            route: self.form.route().to_string(),
            model: self.model.clone(),
            served_by: self.served_by.clone(),
            http_status: status.as_u16(),
            error_code,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            neurons: usage.neurons,
            billable_neurons: 0.0,
            duration_ms: self.started.elapsed().as_millis() as u64,
            batch_item: None,
        };
        Some((self.access.clone(), self.admission.take(), record))
    }
}

impl Drop for Metered {
    /// A run nobody settled: its client left before the answer (the route's future was
    /// dropped). Logged as aborted, its reservation given back.
    fn drop(&mut self) {
        let aborted = ApiError::Infer(InferError::Aborted);
        // A stream's 200 went out with its headers.
        let status = match self.streaming {
            true => StatusCode::OK,
            false => aborted.kind().status,
        };
        self.outcome = Some(Err(aborted));
        if let Some((access, admission, record)) = self.settlement(status)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(settle(access, admission, record));
        }
    }
}

/// A refusal of the caller's access (rate limit, allocation) as the API answers it.
pub(crate) fn refusal(access: &Access, caller: &Caller, error: AccessError) -> ApiError {
    match error {
        AccessError::RateLimited { retry_after_secs } => ApiError::RateLimited { retry_after_secs },
        AccessError::AllocationUsed => ApiError::AllocationUsed {
            daily_free_neurons: caller.account.daily_free_neurons,
            retry_after_secs: seconds_to_midnight(access.now_ms()),
        },
        other => ApiError::Infer(InferError::Internal(other.to_string())),
    }
}

/// Writes a finished request to the request log and the ledger, settling its admission; in its
/// own task, so that it completes even if the request's future is dropped.
pub(crate) async fn settle(
    access: Arc<Access>,
    admission: Option<Admission>,
    record: RequestRecord,
) {
    let request = record.id.clone();
    let written = tokio::spawn(async move { access.settle(admission, record).await }).await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!(%error, request, "could not write the request log"),
        Err(error) => tracing::error!(%error, request, "the request log writer failed"),
    }
}

/// Seconds until the next 00:00 UTC, when daily allocations reset.
fn seconds_to_midnight(now_ms: i64) -> u64 {
    let left_ms = DAY_MS - now_ms.rem_euclid(DAY_MS);
    (left_ms as u64).div_ceil(1000)
}
