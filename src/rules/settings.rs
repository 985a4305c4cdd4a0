//! Registry connection settings from the rules file's `registries:` block.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::load::expand;
use super::raw::RawRegistry;
use crate::registry::{ConnectionSettings, Credentials, Secret, TlsMode};

/// Allowed `max_concurrency`. A bound is needed because tokio's semaphore
/// panics above `usize::MAX >> 3` permits.
const MAX_CONCURRENCY: std::ops::RangeInclusive<usize> = 1..=1024;

/// Allowed `requests_per_second`, from one request every 100 seconds to
/// 10000 requests a second.
const REQUESTS_PER_SECOND: std::ops::RangeInclusive<f64> = 0.01..=10_000.0;

/// Validates one `registries:` entry. File paths are relative to the rules
/// file's folder.
pub fn connection_settings(
    file: &Path,
    raw: &RawRegistry,
) -> Result<ConnectionSettings, Vec<String>> {
    let mut errors = Vec::new();
    let mut settings = ConnectionSettings::default();
    set_tls(raw, file, &mut settings, &mut errors);
    set_credentials(raw, &mut settings, &mut errors);
    set_limits(raw, &mut settings, &mut errors);
    if errors.is_empty() {
        Ok(settings)
    } else {
        Err(errors)
    }
}

fn set_tls(
    raw: &RawRegistry,
    file: &Path,
    settings: &mut ConnectionSettings,
    errors: &mut Vec<String>,
) {
    match raw.tls.as_deref() {
        None | Some("enabled") => {}
        Some("insecure") => settings.tls = TlsMode::Insecure,
        Some("disabled") => settings.tls = TlsMode::Disabled,
        Some(other) => errors.push(format!(
            "tls: invalid value {other:?}; allowed: enabled, insecure, disabled"
        )),
    }
    let base = file.parent().unwrap_or(Path::new("."));
    settings.ca_file = resolve_path(base, &raw.ca_file, "ca_file", errors);
    let cert = resolve_path(base, &raw.cert_file, "cert_file", errors);
    let key = resolve_path(base, &raw.key_file, "key_file", errors);
    if raw.cert_file.is_some() != raw.key_file.is_some() {
        errors.push("cert_file and key_file must be given together".to_string());
    }
    if let (Some(cert), Some(key)) = (cert, key) {
        settings.client_cert = Some((cert, key));
    }
}

fn resolve_path(
    base: &Path,
    value: &Option<String>,
    field: &str,
    errors: &mut Vec<String>,
) -> Option<PathBuf> {
    let text = expand(value.as_ref()?, field, errors)?;
    let path = base.join(&text);
    if !path.is_file() {
        errors.push(format!(
            "{field}: file {} not found (paths are relative to the rules file)",
            path.display()
        ));
        return None;
    }
    Some(path)
}

fn set_credentials(raw: &RawRegistry, settings: &mut ConnectionSettings, errors: &mut Vec<String>) {
    if raw.username.is_some() != raw.password.is_some() {
        errors.push("username and password must be given together".to_string());
        return;
    }
    let username = raw
        .username
        .as_ref()
        .and_then(|u| expand(u, "username", errors));
    let password = raw
        .password
        .as_ref()
        .and_then(|p| expand(p, "password", errors));
    if let (Some(username), Some(password)) = (username, password) {
        settings.credentials = Some(Credentials::Basic {
            username,
            password: Secret::new(password),
        });
    }
}

fn set_limits(raw: &RawRegistry, settings: &mut ConnectionSettings, errors: &mut Vec<String>) {
    if let Some(max) = raw.max_concurrency {
        if !MAX_CONCURRENCY.contains(&max) {
            errors.push(format!(
                "max_concurrency: must be from {} to {}, not {max}",
                MAX_CONCURRENCY.start(),
                MAX_CONCURRENCY.end()
            ));
        }
        settings.max_concurrency = max.clamp(*MAX_CONCURRENCY.start(), *MAX_CONCURRENCY.end());
    }
    if let Some(rate) = raw.requests_per_second {
        // A NaN fails `contains` too.
        if !REQUESTS_PER_SECOND.contains(&rate) {
            errors.push(format!(
                "requests_per_second: must be a number from {} to {}, not {rate:?}",
                REQUESTS_PER_SECOND.start(),
                REQUESTS_PER_SECOND.end()
            ));
        }
        settings.requests_per_second = Some(rate);
    }
    if let Some(retries) = raw.retries {
        settings.max_attempts = retries.saturating_add(1);
    }
    if let Some(duration) = parse_field("connect_timeout", &raw.connect_timeout, errors) {
        settings.connect_timeout = duration;
    }
    if let Some(duration) = parse_field("read_timeout", &raw.read_timeout, errors) {
        settings.set_read_timeout(duration);
    }
}

fn parse_field(field: &str, value: &Option<String>, errors: &mut Vec<String>) -> Option<Duration> {
    let text = value.as_ref()?;
    let duration = parse_duration(text);
    if duration.is_none() {
        errors.push(format!("{field}: invalid duration {text:?}; use a positive number with ms, s, m or h, such as \"30s\""));
    }
    duration
}

/// Parses `250ms`, `30s`, `5m` or `1h`; a bare number means seconds.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number.parse().ok()?;
    let millis = match unit.trim() {
        "ms" => value,
        "" | "s" => value.checked_mul(1000)?,
        "m" => value.checked_mul(60_000)?,
        "h" => value.checked_mul(3_600_000)?,
        _ => return None,
    };
    (millis > 0).then(|| Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("0s"), None);
    }

    #[test]
    fn limits_out_of_range_are_errors() {
        for max in [0, 1025, 1 << 61] {
            let raw = RawRegistry {
                max_concurrency: Some(max),
                ..RawRegistry::default()
            };
            let errors = connection_settings(Path::new("r.yaml"), &raw).unwrap_err();
            assert_eq!(
                errors,
                vec![format!(
                    "max_concurrency: must be from 1 to 1024, not {max}"
                )]
            );
        }
        for rate in [0.0, -1.0, 0.001, 10_001.0, f64::NAN, f64::INFINITY] {
            let raw = RawRegistry {
                requests_per_second: Some(rate),
                ..RawRegistry::default()
            };
            let errors = connection_settings(Path::new("r.yaml"), &raw).unwrap_err();
            assert!(
                errors[0].contains("from 0.01 to 10000"),
                "{rate}: {errors:?}"
            );
        }
        let raw = RawRegistry {
            max_concurrency: Some(1024),
            requests_per_second: Some(0.01),
            ..RawRegistry::default()
        };
        let settings = connection_settings(Path::new("r.yaml"), &raw).unwrap();
        assert_eq!(settings.max_concurrency, 1024);
    }

    #[test]
    fn username_without_password_is_an_error() {
        let raw = RawRegistry {
            username: Some("u".into()),
            ..RawRegistry::default()
        };
        let errors = connection_settings(Path::new("r.yaml"), &raw).unwrap_err();
        assert_eq!(errors, vec!["username and password must be given together"]);
    }
}
