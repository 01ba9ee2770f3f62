//! What one request asks of its gateway (the `cf-aig-*` headers, or the binding's
//! `options.gateway`), with the limits each option must keep.

use crate::AiGatewayError;

/// `cf-aig-cache-ttl`: at least a minute, at most a month.
pub const CACHE_TTL_SECS: std::ops::RangeInclusive<u64> = 60..=30 * 24 * 3600;
/// `cf-aig-metadata` holds at most this many entries.
pub const MAX_METADATA_ENTRIES: usize = 5;
/// `cf-aig-max-attempts`: 1 to 5.
pub const MAX_ATTEMPTS: u8 = 5;
/// `cf-aig-retry-delay`: at most 5 s.
pub const MAX_RETRY_DELAY_MS: u64 = 5_000;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestOptions {
    pub skip_cache: bool,
    pub cache_ttl_secs: Option<u64>,
    pub cache_key: Option<String>,
    /// A JSON object of at most five string, number or boolean entries.
    pub metadata: Option<String>,
    /// Overrides the gateway's `collect_logs`.
    pub collect_log: Option<bool>,
    /// False: log without the bodies.
    pub collect_log_payload: Option<bool>,
    pub event_id: Option<String>,
    /// How long the provider may take to answer, in milliseconds.
    pub request_timeout_ms: Option<u64>,
    /// The retry settings the request gave; the gateway's fill in the rest.
    pub retries: RetryOptions,
    pub custom_cost: Option<CustomCost>,
}

impl RequestOptions {
    /// Checks a TTL against its bounds.
    pub fn check_cache_ttl(field: &str, secs: u64) -> Result<u64, AiGatewayError> {
        if CACHE_TTL_SECS.contains(&secs) {
            Ok(secs)
        } else {
            Err(AiGatewayError::invalid(
                field,
                format!(
                    "must be from {} to {} seconds, not {secs}",
                    CACHE_TTL_SECS.start(),
                    CACHE_TTL_SECS.end()
                ),
            ))
        }
    }
}

/// Retry settings a request gives (`cf-aig-max-attempts`, `-retry-delay`, `-backoff`), each
/// optional.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RetryOptions {
    pub max_attempts: Option<u8>,
    pub delay_ms: Option<u64>,
    pub backoff: Option<Backoff>,
}

impl RetryOptions {
    /// These settings, the gateway's `defaults` where the request gave none.
    pub fn over(self, defaults: Retries) -> Retries {
        Retries {
            max_attempts: self.max_attempts.unwrap_or(defaults.max_attempts),
            delay_ms: self.delay_ms.unwrap_or(defaults.delay_ms),
            backoff: self.backoff.unwrap_or(defaults.backoff),
        }
    }
}

/// How a failed provider call is tried again (on a 5xx or a timeout only).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retries {
    pub max_attempts: u8,
    pub delay_ms: u64,
    pub backoff: Backoff,
}

impl Default for Retries {
    fn default() -> Retries {
        Retries {
            max_attempts: 1,
            delay_ms: 0,
            backoff: Backoff::Constant,
        }
    }
}

impl Retries {
    pub fn check_attempts(field: &str, attempts: u64) -> Result<u8, AiGatewayError> {
        match u8::try_from(attempts) {
            Ok(attempts @ 1..=MAX_ATTEMPTS) => Ok(attempts),
            _ => Err(AiGatewayError::invalid(
                field,
                format!("must be from 1 to {MAX_ATTEMPTS}, not {attempts}"),
            )),
        }
    }

    pub fn check_delay(field: &str, delay_ms: u64) -> Result<u64, AiGatewayError> {
        if delay_ms <= MAX_RETRY_DELAY_MS {
            Ok(delay_ms)
        } else {
            Err(AiGatewayError::invalid(
                field,
                format!("must be at most {MAX_RETRY_DELAY_MS} ms, not {delay_ms}"),
            ))
        }
    }

    /// The wait before attempt `attempt` (the second attempt is 1).
    pub fn delay_before(&self, attempt: u32) -> u64 {
        match self.backoff {
            Backoff::Constant => self.delay_ms,
            Backoff::Linear => self.delay_ms * u64::from(attempt),
            Backoff::Exponential => self.delay_ms << (attempt.saturating_sub(1)).min(16),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    Constant,
    Linear,
    Exponential,
}

impl Backoff {
    pub fn as_str(self) -> &'static str {
        match self {
            Backoff::Constant => "constant",
            Backoff::Linear => "linear",
            Backoff::Exponential => "exponential",
        }
    }

    pub fn parse(field: &str, text: &str) -> Result<Backoff, AiGatewayError> {
        match text {
            "constant" => Ok(Backoff::Constant),
            "linear" => Ok(Backoff::Linear),
            "exponential" => Ok(Backoff::Exponential),
            other => Err(AiGatewayError::invalid(
                field,
                format!("must be constant, linear or exponential, not '{other}'"),
            )),
        }
    }
}

/// `cf-aig-custom-cost`: the cost the log shows instead of the one from Neurons.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CustomCost {
    PerToken { input: f64, output: f64 },
    Total(f64),
}

/// The dollars a request cost: its custom cost, or its Neurons' price.
pub fn cost(neurons: f64, tokens_in: u32, tokens_out: u32, custom: Option<CustomCost>) -> f64 {
    match custom {
        None => neurons * crate::DOLLARS_PER_NEURON,
        Some(CustomCost::Total(total)) => total,
        Some(CustomCost::PerToken { input, output }) => {
            f64::from(tokens_in) * input + f64::from(tokens_out) * output
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_their_field() {
        assert!(RequestOptions::check_cache_ttl("cf-aig-cache-ttl", 59).is_err());
        assert_eq!(RequestOptions::check_cache_ttl("t", 60).unwrap(), 60);
        let error = RequestOptions::check_cache_ttl("cf-aig-cache-ttl", 2_592_001).unwrap_err();
        assert!(
            error.to_string().starts_with("cf-aig-cache-ttl: "),
            "{error}"
        );
        assert!(Retries::check_attempts("a", 0).is_err());
        assert!(Retries::check_attempts("a", 6).is_err());
        assert!(Retries::check_delay("d", 5_001).is_err());
        assert!(Backoff::parse("b", "random").is_err());
    }

    #[test]
    fn backoff_grows_as_named() {
        let retries = |backoff| Retries {
            max_attempts: 5,
            delay_ms: 100,
            backoff,
        };
        let waits = |r: Retries| (1..=4).map(|a| r.delay_before(a)).collect::<Vec<_>>();
        assert_eq!(waits(retries(Backoff::Constant)), [100, 100, 100, 100]);
        assert_eq!(waits(retries(Backoff::Linear)), [100, 200, 300, 400]);
        assert_eq!(waits(retries(Backoff::Exponential)), [100, 200, 400, 800]);
    }

    #[test]
    fn custom_costs_replace_the_neurons_price() {
        assert_eq!(cost(1000.0, 0, 0, None), 0.011);
        assert_eq!(cost(1000.0, 10, 20, Some(CustomCost::Total(0.5))), 0.5);
        let per_token = CustomCost::PerToken {
            input: 0.01,
            output: 0.02,
        };
        assert_eq!(cost(1000.0, 10, 20, Some(per_token)), 0.5);
    }
}
