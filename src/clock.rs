//! The server's clock. Timed work (bookings "in the future", reminders, ringing calls) reads
//! the time here, so tests can move it forward instead of sleeping for minutes
//! (`TALKAMIE_ADJUSTABLE_CLOCK=true` and `POST /v1/admin/clock`).

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Duration, Utc};

#[derive(Debug, Default)]
pub struct Clock {
    /// Milliseconds added to the system time (only ever grows).
    offset_ms: AtomicI64,
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Moves the clock forward by `seconds`; returns the new time.
    pub fn advance(&self, seconds: i64) -> DateTime<Utc> {
        self.offset_ms
            .fetch_add(seconds.saturating_mul(1000), Ordering::Relaxed);
        self.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_now_forward() {
        let clock = Clock::default();
        let before = clock.now();
        let after = clock.advance(3600);
        assert!(after - before >= Duration::seconds(3600));
        assert!(clock.now() >= after);
    }
}
