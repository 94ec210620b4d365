//! librdkafka's log lines and client errors, said once per cause per window.
//!
//! While a broker cannot be reached (a wrong address, a certificate either
//! side does not trust, a network partition), librdkafka reports the same
//! failure on every reconnect attempt and every metadata request, several
//! times a second per client. rdkafka's default context logs each one, so a
//! misconfigured bridge wrote about 40 lines a second and the one line that
//! named the cause (`certificate verify failed`) scrolled out of sight. Here
//! each distinct cause is logged at once, then at most once per
//! [`WINDOW`], with the number of repeats held back in between.

use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;

use crate::log_limit::LogLimiter;

/// How often one cause is repeated in the log at most.
pub const WINDOW: Duration = Duration::from_secs(10);

/// A limiter for one Kafka client (`client` names it in every line).
#[derive(Debug)]
pub struct KafkaLog {
    client: &'static str,
    limiter: LogLimiter,
}

impl KafkaLog {
    pub fn new(client: &'static str) -> KafkaLog {
        KafkaLog::with_window(client, WINDOW)
    }

    pub fn with_window(client: &'static str, window: Duration) -> KafkaLog {
        KafkaLog {
            client,
            limiter: LogLimiter::new(window),
        }
    }

    fn admit(&self, cause: &str, now: Instant) -> Option<u64> {
        self.limiter.admit(cause, now)
    }

    /// For `ClientContext::log`. Warnings and worse are limited per
    /// facility and level; informational lines pass (they do not repeat).
    pub fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        use RDKafkaLogLevel::*;
        let client = self.client;
        match level {
            Emerg | Alert | Critical | Error => {
                if let Some(held_back) = self.admit(&format!("log:E:{facility}"), Instant::now()) {
                    tracing::error!(target: "librdkafka", client, facility, held_back, "{message}");
                }
            }
            Warning => {
                if let Some(held_back) = self.admit(&format!("log:W:{facility}"), Instant::now()) {
                    tracing::warn!(target: "librdkafka", client, facility, held_back, "{message}");
                }
            }
            Notice | Info => tracing::info!(target: "librdkafka", client, facility, "{message}"),
            Debug => tracing::debug!(target: "librdkafka", client, facility, "{message}"),
        }
    }

    /// For `ClientContext::error`: limited per error code.
    pub fn error(&self, error: &KafkaError, reason: &str) {
        let cause = match error.rdkafka_error_code() {
            Some(code) => format!("error:{code:?}"),
            None => format!("error:{error}"),
        };
        if let Some(held_back) = self.admit(&cause, Instant::now()) {
            tracing::error!(target: "librdkafka", client = self.client, held_back, %error, "{reason}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_said_once_per_window_with_the_repeats_counted() {
        let log = KafkaLog::with_window("test", Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(log.admit("error:SSL", t0), Some(0));
        for i in 1..=39 {
            assert_eq!(
                log.admit("error:SSL", t0 + Duration::from_millis(250 * i)),
                None
            );
        }
        // Another cause is not held back by the first.
        assert_eq!(
            log.admit("error:AllBrokersDown", t0 + Duration::from_secs(1)),
            Some(0)
        );
        assert_eq!(
            log.admit("error:SSL", t0 + Duration::from_secs(10)),
            Some(39)
        );
        assert_eq!(log.admit("error:SSL", t0 + Duration::from_secs(11)), None);
        assert_eq!(
            log.admit("error:SSL", t0 + Duration::from_secs(21)),
            Some(1)
        );
    }
}
