//! When to try a link again: the cloud broker, the in-store broker, a
//! scanner's serial port. Exponential backoff with jitter, capped, never
//! giving up (a store's link or a scanner can be gone all night).
//!
//! The backoff starts over only after a link that *held* for
//! [`Reconnect::STABLE`]. Resetting on every successful connect turns a link
//! that is accepted and dropped at once (a message the broker refuses, an
//! ACL that denies the topic, a port that opens and fails its first read)
//! into a retry every few hundred milliseconds, for ever, from every store.

use std::time::Duration;

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;
use tokio::time::Instant;

pub struct Reconnect {
    backoff: ExponentialBackoff,
    max: Duration,
    up_since: Option<Instant>,
}

impl Reconnect {
    /// How long a link must hold before the backoff starts over.
    pub const STABLE: Duration = Duration::from_secs(30);

    /// Waits start near `initial`, double, and never pass `max`; `jitter`
    /// (0..1) spreads them so stores that lost the same broker do not all
    /// come back in the same instant.
    pub fn new(initial: Duration, max: Duration, jitter: f64) -> Reconnect {
        let max = max.max(Duration::from_millis(1));
        let jitter = jitter.clamp(0.0, 0.99);
        // The crate caps the interval first and randomizes it after, by up
        // to `jitter` either way. Capped at `max` itself, half of all waits
        // at the cap would come out above it and be clipped to exactly
        // `max`: stores that lost the same broker would come back in step.
        // Capped lower, every wait is spread and none passes `max`.
        let interval_cap = max.div_f64(1.0 + jitter);
        let initial = initial.min(interval_cap);
        Reconnect {
            backoff: ExponentialBackoff {
                // Both: the struct starts from `current_interval`.
                current_interval: initial,
                initial_interval: initial,
                randomization_factor: jitter,
                multiplier: 2.0,
                max_interval: interval_cap,
                max_elapsed_time: None,
                ..ExponentialBackoff::default()
            },
            max,
            up_since: None,
        }
    }

    /// The link is up.
    pub fn up(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// The link went down, or an attempt failed: the wait before the next.
    pub fn down(&mut self, now: Instant) -> Duration {
        if self
            .up_since
            .take()
            .is_some_and(|at| now.saturating_duration_since(at) >= Self::STABLE)
        {
            self.backoff.reset();
        }
        self.backoff
            .next_backoff()
            .unwrap_or(self.max)
            .min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_with_jitter_never_pass_the_cap_and_never_give_up() {
        let mut r = Reconnect::new(Duration::from_millis(200), Duration::from_secs(15), 0.5);
        let now = Instant::now();
        let waits: Vec<Duration> = (0..40).map(|_| r.down(now)).collect();
        assert!(
            waits[0] >= Duration::from_millis(100) && waits[0] <= Duration::from_millis(300),
            "{waits:?}"
        );
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(15)));
        assert!(
            waits[15..].iter().all(|w| *w >= Duration::from_secs(5)),
            "after a few attempts the waits sit in the top two thirds below the cap: {waits:?}"
        );
    }

    #[test]
    fn waits_at_the_cap_stay_spread_and_do_not_pile_up_on_it() {
        let cap = Duration::from_secs(15);
        let mut r = Reconnect::new(Duration::from_millis(200), cap, 0.5);
        let now = Instant::now();
        let waits: Vec<Duration> = (0..1_000).map(|_| r.down(now)).skip(20).collect();
        let at_cap = waits.iter().filter(|w| **w >= cap).count();
        assert!(
            at_cap < waits.len() / 20,
            "{at_cap} of {} waits were exactly the cap: stores would reconnect in step",
            waits.len()
        );
        let (lo, hi) = (
            waits.iter().min().copied().unwrap_or_default(),
            waits.iter().max().copied().unwrap_or_default(),
        );
        assert!(
            hi - lo >= Duration::from_secs(8),
            "waits at the cap spread over {lo:?}..{hi:?} only"
        );
    }

    #[test]
    fn only_a_link_that_held_starts_the_backoff_over() {
        let mut r = Reconnect::new(Duration::from_millis(200), Duration::from_secs(15), 0.5);
        let mut now = Instant::now();
        // Accepted, then dropped at once, over and over: the waits grow.
        let mut waits = vec![];
        for _ in 0..8 {
            r.up(now);
            now += Duration::from_millis(5);
            let w = r.down(now);
            waits.push(w);
            now += w;
        }
        assert!(
            waits[7] >= Duration::from_secs(5),
            "a link dropped right after it came up is not retried every 200 ms: {waits:?}"
        );
        // A link that held for the stable period starts over.
        r.up(now);
        now += Reconnect::STABLE;
        assert!(r.down(now) <= Duration::from_millis(300));
        // Failed attempts (no `up` in between) keep growing.
        assert!(r.down(now) >= Duration::from_millis(200));
    }

    #[test]
    fn a_cap_below_the_first_wait_is_the_wait() {
        let mut r = Reconnect::new(Duration::from_millis(100), Duration::from_millis(50), 0.3);
        assert!(r.down(Instant::now()) <= Duration::from_millis(50));
    }
}
