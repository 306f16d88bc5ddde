//! Clock arithmetic that cannot overflow. Every duration the agent adds to an instant is
//! bounded by the configuration (`config::MAX_DURATION`), and every addition goes through
//! here anyway: an overflow would abort the process (a panic), leaving the socket behind
//! and every workload without identities.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Far enough to mean "not in this process's life" without overflowing any clock.
const FAR: Duration = Duration::from_secs(30 * 366 * 24 * 3600);

/// `at + by`, or a far instant when that would overflow.
pub(crate) fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by)
        .or_else(|| at.checked_add(FAR))
        .unwrap_or(at)
}

/// `at + by` on the wall clock, or a far time when that would overflow.
pub(crate) fn later_wall(at: SystemTime, by: Duration) -> SystemTime {
    at.checked_add(by)
        .or_else(|| at.checked_add(FAR))
        .unwrap_or(at)
}

/// `at - by` on the wall clock, or the epoch when that would underflow.
pub(crate) fn earlier_wall(at: SystemTime, by: Duration) -> SystemTime {
    at.checked_sub(by).unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn additions_saturate_instead_of_overflowing() {
        let now = SystemTime::now();
        assert!(later_wall(now, Duration::MAX) > now);
        assert_eq!(earlier_wall(now, Duration::MAX), SystemTime::UNIX_EPOCH);
        assert_eq!(
            later_wall(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }

    #[tokio::test]
    async fn instants_saturate_instead_of_overflowing() {
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > now);
        assert_eq!(
            later(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }
}
