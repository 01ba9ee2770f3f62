//! A gateway's DLP on one request (the policies and profiles are `ember_ai_gateway::dlp`'s): the
//! request's body scanned after a cache miss (a hit is not scanned: its answer passed when it
//! was kept, and the cached path stays cheap); a whole answer, or a stream read whole first, scanned before it goes out. A
//! block answers Cloudflare's 2029 (request) or 2030 (response) and is never cached; what was
//! found, flagged or blocked, goes out in the `cf-aig-dlp` header and into the log.

use super::guarding::streamed_answer;
use crate::error::ApiError;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue};
use ember_ai_gateway::dlp::{Check, Dlp, DlpAction, Findings};

/// The header naming what DLP found.
const DLP_HEADER: &str = "cf-aig-dlp";

pub(super) struct Scanning {
    dlp: Dlp,
    request: Bytes,
    found: Option<Findings>,
}

impl Scanning {
    /// The gateway's DLP on a request whose body is `body`; none when no policy is on.
    pub(super) fn new(stored: Option<&str>, body: &Bytes) -> Option<Scanning> {
        let dlp = Dlp::parse_stored(stored)?;
        if !dlp.checks(Check::Request) && !dlp.checks(Check::Response) {
            return None;
        }
        Some(Scanning {
            dlp,
            request: body.clone(),
            found: None,
        })
    }

    /// Scans the request; refuses one the policies block.
    pub(super) fn check_request(&mut self) -> Result<(), ApiError> {
        self.found = self
            .dlp
            .scan(Check::Request, &String::from_utf8_lossy(&self.request));
        match &self.found {
            Some(found) if found.action == DlpAction::Block => {
                Err(ApiError::DlpBlocked { response: false })
            }
            _ => Ok(()),
        }
    }

    /// Whether answers are scanned (so a stream must be read whole first).
    pub(super) fn scans_answers(&self) -> bool {
        self.dlp.checks(Check::Response)
    }

    /// Scans an answer's body: its text as sent and, for a stream, the answer its events spell
    /// (a card number streamed a token at a time is in no one event).
    pub(super) fn check_answer(&mut self, body: &[u8]) -> Result<(), ApiError> {
        let mut text = String::from_utf8_lossy(body).into_owned();
        if let Some(answer) = streamed_answer(body) {
            text.push('\n');
            text.push_str(&answer);
        }
        let answer = self.dlp.scan(Check::Response, &text);
        let blocked = answer
            .as_ref()
            .is_some_and(|a| a.action == DlpAction::Block);
        self.found = Findings::merge(self.found.take(), answer);
        match blocked {
            true => Err(ApiError::DlpBlocked { response: true }),
            false => Ok(()),
        }
    }

    /// What was found, for the log (the header's object).
    pub(super) fn found(&self) -> Option<String> {
        self.found.as_ref().map(|found| found.to_json().to_string())
    }
}

/// Names what DLP found (`found`, the log's `dlp`) in the response's `cf-aig-dlp` header.
pub(super) fn mark(headers: &mut HeaderMap, found: Option<&str>) {
    if let Some(value) = found.and_then(|f| HeaderValue::from_str(f).ok()) {
        headers.insert(DLP_HEADER, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_number_streamed_in_pieces_is_found_in_the_answer_they_spell() {
        let dlp = json!({"policies": [{"id": "cards", "action": "BLOCK", "check": ["RESPONSE"],
                                       "profiles": ["financial-information"]}]});
        let mut scanning =
            Scanning::new(Some(&dlp.to_string()), &Bytes::from_static(b"{}")).unwrap();
        assert!(scanning.check_request().is_ok());
        let events =
            "data: {\"response\":\"4111 1111 \"}\n\ndata: {\"response\":\"1111 1111\"}\n\n";
        let checked = scanning.check_answer(events.as_bytes());
        assert!(matches!(
            checked,
            Err(ApiError::DlpBlocked { response: true })
        ));
        assert!(scanning.found().unwrap().contains("credit-card-number"));
    }
}
