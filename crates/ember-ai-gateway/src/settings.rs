//! A gateway's settings: what a new one starts with, the id rules, and a change checked field by
//! field.

use crate::AiGatewayError;
use crate::dlp::Dlp;
use crate::guardrails::Guardrails;
use crate::options::{Backoff, Retries};
use ember_store::{Gateway, LogStrategy, RateTechnique};

/// Gateway ids are what Cloudflare accepts: lowercase letters, digits and `_`, in words joined by
/// single `-`, at most 64 characters.
pub fn check_id(id: &str) -> Result<(), AiGatewayError> {
    check_name("id", id)
}

/// The same rule, for the names of other gateway objects (routes), refused by `field`.
pub fn check_name(field: &str, id: &str) -> Result<(), AiGatewayError> {
    let word = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    if id.len() <= 64 && id.split('-').all(word) {
        Ok(())
    } else {
        Err(AiGatewayError::invalid(
            field,
            format!(
                "'{id}' is not a valid name: lowercase letters, digits and _ in words joined \
                 by -, at most 64 characters"
            ),
        ))
    }
}

/// A new gateway as Cloudflare makes `default`: logs on, cache off, no rate limit, no
/// authentication beyond the account's token.
pub fn new_gateway(account_id: &str, id: &str, now_ms: i64) -> Gateway {
    Gateway {
        account_id: account_id.to_string(),
        id: id.to_string(),
        cache_ttl: 0,
        cache_invalidate_on_update: false,
        collect_logs: true,
        rate_limiting_limit: None,
        rate_limiting_interval: None,
        rate_limiting_technique: RateTechnique::Fixed,
        authentication: false,
        log_management: None,
        log_management_strategy: LogStrategy::StopInserting,
        created_at_ms: now_ms,
        modified_at_ms: now_ms,
        guardrails: None,
        retry_max_attempts: None,
        retry_delay_ms: None,
        retry_backoff: None,
        dlp: None,
    }
}

/// How a gateway's requests are retried when they do not say.
pub fn retry_defaults(gateway: &Gateway) -> Retries {
    let backoff = gateway.retry_backoff.as_deref();
    Retries {
        max_attempts: gateway.retry_max_attempts.unwrap_or(1),
        delay_ms: gateway.retry_delay_ms.unwrap_or(0),
        backoff: backoff
            .and_then(|text| Backoff::parse("retry_backoff", text).ok())
            .unwrap_or(Backoff::Constant),
    }
}

/// A change of settings: the fields given; `Some(None)` clears a nullable one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewaySettings {
    pub cache_ttl: Option<u64>,
    pub cache_invalidate_on_update: Option<bool>,
    pub collect_logs: Option<bool>,
    pub rate_limiting_limit: Option<Option<u32>>,
    pub rate_limiting_interval: Option<Option<u32>>,
    pub rate_limiting_technique: Option<RateTechnique>,
    pub authentication: Option<bool>,
    pub log_management: Option<Option<u64>>,
    pub log_management_strategy: Option<LogStrategy>,
    /// `Some(None)` turns guardrails off.
    pub guardrails: Option<Option<Guardrails>>,
    /// `Some(None)` removes the DLP setting.
    pub dlp: Option<Option<Dlp>>,
    /// Retries of requests that do not say; `Some(None)` clears one.
    pub retry_max_attempts: Option<Option<u64>>,
    pub retry_delay_ms: Option<Option<u64>>,
    pub retry_backoff: Option<Option<Backoff>>,
}

/// `cache_ttl` of a gateway: 0 (off) up to a month.
const MAX_CACHE_TTL_SECS: u64 = 30 * 24 * 3600;

impl GatewaySettings {
    /// Applies the change to `gateway`, refusing values out of their bounds by field.
    pub fn apply(&self, gateway: &mut Gateway) -> Result<(), AiGatewayError> {
        if let Some(ttl) = self.cache_ttl {
            if ttl > MAX_CACHE_TTL_SECS {
                return Err(AiGatewayError::invalid(
                    "cache_ttl",
                    format!("must be at most {MAX_CACHE_TTL_SECS} seconds"),
                ));
            }
            gateway.cache_ttl = ttl;
        }
        let positive = |field: &str, value: Option<u64>| match value {
            Some(0) => Err(AiGatewayError::invalid(field, "must be at least 1")),
            _ => Ok(()),
        };
        if let Some(limit) = self.rate_limiting_limit {
            positive("rate_limiting_limit", limit.map(u64::from))?;
            gateway.rate_limiting_limit = limit;
        }
        if let Some(interval) = self.rate_limiting_interval {
            positive("rate_limiting_interval", interval.map(u64::from))?;
            gateway.rate_limiting_interval = interval;
        }
        if let Some(at_most) = self.log_management {
            positive("log_management", at_most)?;
            gateway.log_management = at_most;
        }
        let set = |target: &mut bool, value: Option<bool>| {
            if let Some(value) = value {
                *target = value;
            }
        };
        set(
            &mut gateway.cache_invalidate_on_update,
            self.cache_invalidate_on_update,
        );
        set(&mut gateway.collect_logs, self.collect_logs);
        set(&mut gateway.authentication, self.authentication);
        if let Some(technique) = self.rate_limiting_technique {
            gateway.rate_limiting_technique = technique;
        }
        if let Some(strategy) = self.log_management_strategy {
            gateway.log_management_strategy = strategy;
        }
        if let Some(attempts) = self.retry_max_attempts {
            gateway.retry_max_attempts = attempts
                .map(|n| Retries::check_attempts("retry_max_attempts", n))
                .transpose()?;
        }
        if let Some(delay) = self.retry_delay_ms {
            gateway.retry_delay_ms = delay
                .map(|ms| Retries::check_delay("retry_delay", ms))
                .transpose()?;
        }
        if let Some(backoff) = self.retry_backoff {
            gateway.retry_backoff = backoff.map(|b| b.as_str().to_string());
        }
        if let Some(guardrails) = &self.guardrails {
            gateway.guardrails = guardrails
                .as_ref()
                .filter(|g| !g.is_empty())
                .map(|g| g.to_json().to_string());
        }
        if let Some(dlp) = &self.dlp {
            gateway.dlp = dlp.as_ref().map(|d| d.to_json().to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_cloudflares_rule() {
        for good in ["default", "my-gateway", "a_b-c9", &"x".repeat(64)] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in ["", "My", "a--b", "-a", "a-", "a b", "a/b", &"x".repeat(65)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_change_is_checked_before_it_applies() {
        let mut gateway = new_gateway("a", "g", 0);
        let bad = GatewaySettings {
            cache_ttl: Some(60),
            rate_limiting_limit: Some(Some(0)),
            ..GatewaySettings::default()
        };
        let error = bad.apply(&mut gateway.clone()).unwrap_err();
        assert!(
            error.to_string().starts_with("rate_limiting_limit"),
            "{error}"
        );
        let good = GatewaySettings {
            cache_ttl: Some(60),
            rate_limiting_limit: Some(Some(3)),
            rate_limiting_interval: Some(Some(60)),
            collect_logs: Some(false),
            ..GatewaySettings::default()
        };
        good.apply(&mut gateway).unwrap();
        assert_eq!(gateway.cache_ttl, 60);
        assert_eq!(gateway.rate_limiting_limit, Some(3));
        assert!(!gateway.collect_logs);
        let cleared = GatewaySettings {
            rate_limiting_limit: Some(None),
            ..GatewaySettings::default()
        };
        cleared.apply(&mut gateway).unwrap();
        assert_eq!((gateway.rate_limiting_limit, gateway.cache_ttl), (None, 60));
    }
}
