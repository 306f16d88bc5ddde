//! Pausing an accept loop after failed accepts.

use std::time::Duration;

/// The first pause after a failed accept.
const FIRST: Duration = Duration::from_millis(10);
/// The longest pause.
const LONGEST: Duration = Duration::from_secs(1);

/// How long an accept loop pauses after a failed accept (out of file descriptors, for
/// one: the pending connection stays queued, so retrying at once spins a core): 10 ms,
/// doubling with each failure in a row up to a second, back to none after a success.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptBackoff(Duration);

impl AcceptBackoff {
    /// An accept succeeded: no pause next time.
    pub fn succeeded(&mut self) {
        self.0 = Duration::ZERO;
    }

    /// An accept failed: the pause to take now.
    pub fn failed(&mut self) -> Duration {
        self.0 = self.0.saturating_mul(2).clamp(FIRST, LONGEST);
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_failed_accepts_pause_doubling_up_to_a_second_and_reset_on_success() {
        let mut backoff = AcceptBackoff::default();
        let pauses: Vec<_> = (0..9).map(|_| backoff.failed().as_millis()).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.succeeded();
        assert_eq!(backoff.failed(), FIRST);
    }
}
