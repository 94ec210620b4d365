//! One log line per cause per window, with the repeats held back counted:
//! for failures that repeat several times a second (librdkafka's reconnect
//! errors, receipts a broker refuses) and would bury the line that names
//! the cause.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LogLimiter {
    window: Duration,
    seen: Mutex<HashMap<String, Seen>>,
}

#[derive(Debug)]
struct Seen {
    last: Instant,
    held_back: u64,
}

impl LogLimiter {
    pub fn new(window: Duration) -> LogLimiter {
        LogLimiter {
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(repeats held back since the last line)` if `cause` may be
    /// logged now, `None` if it was logged within the window.
    pub fn admit(&self, cause: &str, now: Instant) -> Option<u64> {
        // A poisoned lock only means a panic elsewhere mid-update: the map
        // is still usable, and dropping a log line is worse.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get_mut(cause) {
            Some(s) if now.duration_since(s.last) < self.window => {
                s.held_back += 1;
                None
            }
            Some(s) => {
                s.last = now;
                Some(std::mem::take(&mut s.held_back))
            }
            None => {
                // Causes are error codes, facilities and reason codes: a
                // small, fixed set, so the map stays small.
                seen.insert(
                    cause.to_owned(),
                    Seen {
                        last: now,
                        held_back: 0,
                    },
                );
                Some(0)
            }
        }
    }
}
