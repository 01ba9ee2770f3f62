//! A gateway's Data Loss Prevention: policies that scan requests and/or responses for sensitive
//! data with detection profiles, and flag (logged, and passed, with the `cf-aig-dlp` header) or
//! block (refused with code 2029 or 2030) what they find. Read from and written as the API's
//! `dlp` object, `{"enabled": true, "policies": [{id, action, check, enabled, profiles}]}` (the
//! older `{action, enabled, profiles}` is read as one policy checking both). Cloudflare's profiles
//! are its Zero Trust account's; Ember's are the predefined ones below (`PROFILES`), each entry a
//! pattern with the checksum its numbers carry where they have one, so digits that merely look
//! like a card number are not one.

use crate::AiGatewayError;
use regex::Regex;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::LazyLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlpAction {
    Flag,
    Block,
}

impl DlpAction {
    fn parse(field: &str, value: Option<&Value>) -> Result<DlpAction, AiGatewayError> {
        match value
            .and_then(Value::as_str)
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            Some("FLAG") => Ok(DlpAction::Flag),
            Some("BLOCK") => Ok(DlpAction::Block),
            _ => Err(AiGatewayError::invalid(
                field,
                "must be \"FLAG\" or \"BLOCK\"",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DlpAction::Flag => "FLAG",
            DlpAction::Block => "BLOCK",
        }
    }
}

/// What a policy scans: the request (the prompt) or the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Request,
    Response,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Request => "REQUEST",
            Check::Response => "RESPONSE",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DlpPolicy {
    pub id: String,
    pub action: DlpAction,
    pub checks: Vec<Check>,
    pub enabled: bool,
    /// Ids in `PROFILES`.
    pub profiles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dlp {
    pub enabled: bool,
    pub policies: Vec<DlpPolicy>,
}

impl Dlp {
    /// The API's object, every field checked; one out of the rules is named as a JSON path
    /// (`dlp.policies.0.profiles.1`).
    pub fn from_json(value: &Value) -> Result<Dlp, AiGatewayError> {
        let object = value
            .as_object()
            .ok_or_else(|| AiGatewayError::invalid("dlp", "must be an object"))?;
        let enabled = flag("dlp.enabled", object.get("enabled"))?;
        let policies = match object.get("policies") {
            Some(Value::Array(policies)) => policies
                .iter()
                .enumerate()
                .map(|(index, policy)| policy_from_json(&format!("dlp.policies.{index}"), policy))
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(AiGatewayError::invalid("dlp.policies", "must be an array")),
            // The older shape: one policy's action and profiles, checking both ways.
            None if object.contains_key("profiles") => vec![DlpPolicy {
                id: "dlp".into(),
                action: DlpAction::parse("dlp.action", object.get("action"))?,
                checks: vec![Check::Request, Check::Response],
                enabled: true,
                profiles: profiles_from_json("dlp.profiles", object.get("profiles"))?,
            }],
            None => Vec::new(),
        };
        Ok(Dlp { enabled, policies })
    }

    pub fn to_json(&self) -> Value {
        let policies: Vec<Value> = self
            .policies
            .iter()
            .map(|policy| {
                json!({
                    "id": policy.id,
                    "action": policy.action.as_str(),
                    "check": policy.checks.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                    "enabled": policy.enabled,
                    "profiles": policy.profiles,
                })
            })
            .collect();
        json!({"enabled": self.enabled, "policies": policies})
    }

    /// A gateway's stored setting; none when it has none (or it cannot be read).
    pub fn parse_stored(text: Option<&str>) -> Option<Dlp> {
        let value: Value = serde_json::from_str(text?).ok()?;
        Dlp::from_json(&value).ok()
    }

    /// Whether any enabled policy scans `check`'s side.
    pub fn checks(&self, check: Check) -> bool {
        self.active(check).next().is_some()
    }

    fn active(&self, check: Check) -> impl Iterator<Item = &DlpPolicy> {
        self.policies
            .iter()
            .filter(move |p| self.enabled && p.enabled && p.checks.contains(&check))
    }

    /// What the policies scanning `check`'s side find in `text`: a finding per matched profile,
    /// with the policies that named it; none when nothing matched.
    pub fn scan(&self, check: Check, text: &str) -> Option<Findings> {
        let mut findings: Vec<Finding> = Vec::new();
        let mut action = DlpAction::Flag;
        for policy in self.active(check) {
            for profile_id in &policy.profiles {
                let Some(profile) = PROFILES.iter().find(|p| p.id == profile_id) else {
                    continue;
                };
                let entry_ids: Vec<String> = profile
                    .entries
                    .iter()
                    .filter(|entry| entry.detect(text))
                    .map(|entry| entry.id.to_string())
                    .collect();
                if entry_ids.is_empty() {
                    continue;
                }
                if policy.action == DlpAction::Block {
                    action = DlpAction::Block;
                }
                match findings.iter_mut().find(|f| f.profile_id == profile.id) {
                    Some(finding) => finding.policy_ids.push(policy.id.clone()),
                    None => findings.push(Finding {
                        profile_id: profile.id.to_string(),
                        entry_ids,
                        policy_ids: vec![policy.id.clone()],
                        check,
                    }),
                }
            }
        }
        (!findings.is_empty()).then_some(Findings { findings, action })
    }
}

fn flag(field: &str, value: Option<&Value>) -> Result<bool, AiGatewayError> {
    match value {
        None | Some(Value::Null) => Ok(true),
        Some(Value::Bool(enabled)) => Ok(*enabled),
        Some(_) => Err(AiGatewayError::invalid(field, "must be true or false")),
    }
}

fn policy_from_json(field: &str, value: &Value) -> Result<DlpPolicy, AiGatewayError> {
    let object = value
        .as_object()
        .ok_or_else(|| AiGatewayError::invalid(field, "must be an object"))?;
    let id = match object.get("id").and_then(Value::as_str) {
        Some(id) if !id.trim().is_empty() => id.to_string(),
        _ => {
            return Err(AiGatewayError::invalid(
                &format!("{field}.id"),
                "must be a name",
            ));
        }
    };
    let checks = match object.get("check") {
        Some(Value::Array(checks)) if !checks.is_empty() => checks
            .iter()
            .enumerate()
            .map(|(index, check)| match check.as_str() {
                Some("REQUEST") => Ok(Check::Request),
                Some("RESPONSE") => Ok(Check::Response),
                _ => Err(AiGatewayError::invalid(
                    &format!("{field}.check.{index}"),
                    "must be \"REQUEST\" or \"RESPONSE\"",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => {
            let message = "must be a list of \"REQUEST\" and \"RESPONSE\"";
            return Err(AiGatewayError::invalid(&format!("{field}.check"), message));
        }
    };
    Ok(DlpPolicy {
        id,
        action: DlpAction::parse(&format!("{field}.action"), object.get("action"))?,
        checks,
        enabled: flag(&format!("{field}.enabled"), object.get("enabled"))?,
        profiles: profiles_from_json(&format!("{field}.profiles"), object.get("profiles"))?,
    })
}

fn profiles_from_json(field: &str, value: Option<&Value>) -> Result<Vec<String>, AiGatewayError> {
    let Some(Value::Array(ids)) = value.filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    else {
        return Err(AiGatewayError::invalid(field, "must list DLP profile ids"));
    };
    ids.iter()
        .enumerate()
        .map(|(index, id)| match id.as_str() {
            Some(id) if PROFILES.iter().any(|p| p.id == id) => Ok(id.to_string()),
            _ => Err(AiGatewayError::invalid(
                &format!("{field}.{index}"),
                format!(
                    "is no DLP profile (GET /client/v4/accounts/{{id}}/dlp/profiles lists them: {})",
                    PROFILES.iter().map(|p| p.id).collect::<Vec<_>>().join(", ")
                ),
            )),
        })
        .collect()
}

/// A profile that matched, on one side.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub profile_id: String,
    pub entry_ids: Vec<String>,
    pub policy_ids: Vec<String>,
    pub check: Check,
}

/// What DLP found in a request and its response, and what it did.
#[derive(Debug, Clone, PartialEq)]
pub struct Findings {
    pub findings: Vec<Finding>,
    pub action: DlpAction,
}

impl Findings {
    /// The findings of both sides: blocked if either blocked.
    pub fn merge(first: Option<Findings>, second: Option<Findings>) -> Option<Findings> {
        match (first, second) {
            (Some(mut first), Some(second)) => {
                first.findings.extend(second.findings);
                if second.action == DlpAction::Block {
                    first.action = DlpAction::Block;
                }
                Some(first)
            }
            (first, second) => first.or(second),
        }
    }

    /// The `cf-aig-dlp` header's object, also kept in the log.
    pub fn to_json(&self) -> Value {
        let findings: Vec<Value> = self
            .findings
            .iter()
            .map(|finding| {
                json!({
                    "profile": {"context": {}, "entry_ids": finding.entry_ids, "profile_id": finding.profile_id},
                    "policy_ids": finding.policy_ids,
                    "check": finding.check.as_str(),
                })
            })
            .collect();
        json!({"findings": findings, "action": self.action.as_str()})
    }
}

/// A detection profile: a named set of entries.
pub struct Profile {
    pub id: &'static str,
    pub name: &'static str,
    pub entries: &'static [Entry],
}

/// One kind of sensitive data: a pattern, and the check a match must pass (a checksum) to count.
pub struct Entry {
    pub id: &'static str,
    pub name: &'static str,
    pattern: &'static str,
    valid: fn(&str) -> bool,
}

impl Entry {
    const fn new(id: &'static str, name: &'static str, pattern: &'static str) -> Entry {
        Entry {
            id,
            name,
            pattern,
            valid: |_| true,
        }
    }

    const fn checked(self, valid: fn(&str) -> bool) -> Entry {
        Entry { valid, ..self }
    }

    fn detect(&self, text: &str) -> bool {
        let pattern = &PATTERNS[self.id];
        pattern
            .find_iter(text)
            .any(|found| (self.valid)(found.as_str()))
    }
}

/// Ember's predefined profiles, after Cloudflare's (health records are not among them: they
/// have no pattern to find them by).
pub static PROFILES: &[Profile] = &[
    Profile {
        id: "financial-information",
        name: "Financial Information",
        entries: &[
            // 13 to 19 digits, spaces or dashes between them allowed.
            Entry::new(
                "credit-card-number",
                "Credit card number",
                r"\b\d(?:[ -]?\d){12,18}\b",
            )
            .checked(card_number),
            Entry::new(
                "iban",
                "International Bank Account Number (IBAN)",
                r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b",
            )
            .checked(iban),
        ],
    },
    Profile {
        id: "credentials-and-secrets",
        name: "Credentials and Secrets",
        entries: &[
            Entry::new(
                "aws-access-key-id",
                "Amazon AWS Access Key ID",
                r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
            ),
            Entry::new(
                "github-token",
                "GitHub token",
                r"\bgh[pousr]_[A-Za-z0-9]{36}\b",
            ),
            Entry::new(
                "google-api-key",
                "Google API key",
                r"\bAIza[0-9A-Za-z_-]{35}",
            ),
            Entry::new(
                "slack-token",
                "Slack token",
                r"\bxox[abposr]-[0-9A-Za-z]+-[0-9A-Za-z-]{8,}",
            ),
            Entry::new(
                "openai-api-key",
                "OpenAI API key",
                r"\bsk-(?:proj-)?[A-Za-z0-9_-]{32,}",
            ),
            Entry::new(
                "private-key",
                "Private key",
                r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----",
            ),
        ],
    },
    Profile {
        id: "government-identifiers",
        name: "Government Identifiers",
        entries: &[
            Entry::new(
                "us-social-security-number",
                "United States Social Security Number (SSN)",
                r"\b\d{3}-\d{2}-\d{4}\b",
            )
            .checked(ssn),
            Entry::new(
                "uk-national-insurance-number",
                "United Kingdom National Insurance Number",
                r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b",
            ),
        ],
    },
    Profile {
        id: "personal-information",
        name: "Personally Identifiable Information (PII)",
        entries: &[
            Entry::new(
                "email-address",
                "Email address",
                r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
            ),
            Entry::new(
                "phone-number",
                "Phone number (North American, with or without a country code)",
                r"(?:\+\d{1,3}[ .-]?)?\(?\b\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b",
            ),
        ],
    },
];

/// Every entry's pattern, compiled once, by entry id.
static PATTERNS: LazyLock<HashMap<&'static str, Regex>> = LazyLock::new(|| {
    let entries = PROFILES.iter().flat_map(|profile| profile.entries);
    // The patterns are constants: one that does not compile is a bug the unit tests catch.
    entries
        .map(|entry| {
            (
                entry.id,
                Regex::new(entry.pattern).expect("a DLP pattern compiles"),
            )
        })
        .collect()
});

/// A card number: a card network's first digit and a valid Luhn check digit.
fn card_number(found: &str) -> bool {
    let digits: Vec<u32> = found.chars().filter_map(|c| c.to_digit(10)).collect();
    matches!(digits[0], 2..=6) && luhn(&digits)
}

fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(index, &digit)| match index % 2 {
            1 if digit * 2 > 9 => digit * 2 - 9,
            1 => digit * 2,
            _ => digit,
        })
        .sum();
    sum.is_multiple_of(10)
}

/// An IBAN whose mod-97 check holds (ISO 13616).
fn iban(found: &str) -> bool {
    let compact: String = found.chars().filter(|c| *c != ' ').collect();
    let (head, tail) = compact.split_at(4);
    let mut remainder: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let Some(value) = c.to_digit(36) else {
            return false;
        };
        // Letters count as two digits (A = 10 ... Z = 35).
        let shift = if value > 9 { 100 } else { 10 };
        remainder = (remainder * shift + value) % 97;
    }
    remainder == 1
}

/// A dashed SSN whose area, group and serial are ones the SSA issues.
fn ssn(found: &str) -> bool {
    let mut parts = found.split('-');
    let (area, group, serial) = (parts.next(), parts.next(), parts.next());
    let (Some(area), Some(group), Some(serial)) = (area, group, serial) else {
        return false;
    };
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<&'static str> {
        PROFILES
            .iter()
            .flat_map(|profile| profile.entries.iter())
            .filter(|entry| entry.detect(text))
            .map(|entry| entry.id)
            .collect()
    }

    #[test]
    fn entries_find_what_they_name_and_not_lookalikes() {
        let cases = [
            (
                "my card is 4111 1111 1111 1111, exp 12/29",
                vec!["credit-card-number"],
            ),
            ("card 5500-0000-0000-0004", vec!["credit-card-number"]),
            // The Luhn digit is wrong.
            ("order 4111 1111 1111 1112", vec![]),
            ("pay to GB82 WEST 1234 5698 7654 32 today", vec!["iban"]),
            ("pay to GB82 WEST 1234 5698 7654 33 today", vec![]),
            ("key AKIAIOSFODNN7EXAMPLE", vec!["aws-access-key-id"]),
            (
                "ghp_0123456789abcdefghijABCDEFGHIJ012345",
                vec!["github-token"],
            ),
            (
                "AIzaSyA-1234567890abcdefghijklmnopqrstu",
                vec!["google-api-key"],
            ),
            ("xoxb-123456789012-abcdefghijkl", vec!["slack-token"]),
            (
                "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
                vec!["openai-api-key"],
            ),
            ("-----BEGIN RSA PRIVATE KEY-----\nMIIE", vec!["private-key"]),
            ("SSN 123-45-6789", vec!["us-social-security-number"]),
            // Never issued: area 666, group 00.
            ("ids 666-45-6789 and 123-00-6789", vec![]),
            (
                "NI number AB 12 34 56 C",
                vec!["uk-national-insurance-number"],
            ),
            ("write to jane.doe@example.co.uk", vec!["email-address"]),
            ("call (415) 555-0132", vec!["phone-number"]),
            ("call +44 20 7946 0958", vec![]),
            (
                "What is the capital of France? Version 1.2.3, 2026-12-07.",
                vec![],
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(found(text), expected, "{text}");
        }
    }

    #[test]
    fn policies_are_read_checked_and_written_back() {
        let dlp = Dlp::from_json(&json!({"enabled": true, "policies": [
            {"id": "no-cards", "action": "BLOCK", "check": ["REQUEST"], "enabled": true,
             "profiles": ["financial-information"]},
            {"id": "audit", "action": "FLAG", "check": ["REQUEST", "RESPONSE"],
             "profiles": ["financial-information", "personal-information"]}
        ]}))
        .unwrap();
        assert_eq!(
            Dlp::parse_stored(Some(&dlp.to_json().to_string())),
            Some(dlp.clone())
        );
        assert!(dlp.checks(Check::Response));
        let findings = dlp
            .scan(Check::Request, "card 4111 1111 1111 1111, mail a@b.io")
            .unwrap();
        assert_eq!(
            findings.to_json(),
            json!({"findings": [
                {"profile": {"context": {}, "entry_ids": ["credit-card-number"], "profile_id": "financial-information"},
                 "policy_ids": ["no-cards", "audit"], "check": "REQUEST"},
                {"profile": {"context": {}, "entry_ids": ["email-address"], "profile_id": "personal-information"},
                 "policy_ids": ["audit"], "check": "REQUEST"}
            ], "action": "BLOCK"})
        );
        // The response side is only flagged.
        let answer = dlp.scan(Check::Response, "4111 1111 1111 1111").unwrap();
        assert_eq!(answer.action, DlpAction::Flag);
        assert_eq!(dlp.scan(Check::Request, "nothing here"), None);

        // The older shape is one policy checking both sides.
        let older = Dlp::from_json(
            &json!({"action": "FLAG", "enabled": true, "profiles": ["personal-information"]}),
        )
        .unwrap();
        assert_eq!(
            older.policies[0].checks,
            vec![Check::Request, Check::Response]
        );
        let off = Dlp::from_json(&json!({"enabled": false, "policies": []})).unwrap();
        assert!(!off.checks(Check::Request));
    }

    #[test]
    fn bad_settings_name_their_field() {
        for (setting, field) in [
            (json!([]), "dlp"),
            (json!({"policies": {}}), "dlp.policies"),
            (
                json!({"policies": [{"action": "BLOCK", "check": ["REQUEST"], "profiles": ["pii"]}]}),
                "dlp.policies.0.id",
            ),
            (
                json!({"policies": [{"id": "p", "action": "DROP", "check": ["REQUEST"], "profiles": ["personal-information"]}]}),
                "dlp.policies.0.action",
            ),
            (
                json!({"policies": [{"id": "p", "action": "FLAG", "check": ["BOTH"], "profiles": ["personal-information"]}]}),
                "dlp.policies.0.check.0",
            ),
            (
                json!({"policies": [{"id": "p", "action": "FLAG", "check": ["REQUEST"], "profiles": ["personal-information", "pii"]}]}),
                "dlp.policies.0.profiles.1",
            ),
            (
                json!({"policies": [{"id": "p", "action": "FLAG", "check": ["REQUEST"], "profiles": []}]}),
                "dlp.policies.0.profiles",
            ),
            (json!({"enabled": "yes"}), "dlp.enabled"),
        ] {
            let error = Dlp::from_json(&setting).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("{field}:")),
                "{setting}: {error}"
            );
        }
    }
}
