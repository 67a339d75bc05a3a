//! Rate limits on guessable endpoints (sign-in and OTP, per email and per client IP: the peer
//! address; a proxy in front should be configured to limit by the real client) and on chat
//! messages per sender.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::http::envelope::ApiError;

pub struct RateLimits {
    pub sign_in_per_email: DefaultKeyedRateLimiter<String>,
    pub sign_in_per_ip: DefaultKeyedRateLimiter<String>,
    pub otp_per_email: DefaultKeyedRateLimiter<String>,
    pub otp_per_ip: DefaultKeyedRateLimiter<String>,
    /// Chat messages per sender, over all their sockets and instances' worth of one process.
    pub messages_per_user: DefaultKeyedRateLimiter<String>,
}

fn quota(burst: u32, per_minute: u32) -> Quota {
    let n = |v: u32| NonZeroU32::new(v.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(n(per_minute)).allow_burst(n(burst))
}

impl RateLimits {
    /// The limits, with the per-sender chat quota from the settings.
    pub fn new(chat_messages_per_minute: u32) -> Self {
        RateLimits {
            // 10 tries at once per email, then one every 30 s.
            sign_in_per_email: RateLimiter::keyed(quota(10, 2)),
            // One address may try many accounts, but not without bound.
            sign_in_per_ip: RateLimiter::keyed(quota(50, 20)),
            // Codes are mailed: 5 at once per email, then one a minute.
            otp_per_email: RateLimiter::keyed(quota(5, 1)),
            otp_per_ip: RateLimiter::keyed(quota(30, 10)),
            // A person types far slower; a burst covers a client flushing its outbox.
            messages_per_user: RateLimiter::keyed(quota(
                (chat_messages_per_minute / 4).max(30),
                chat_messages_per_minute,
            )),
        }
    }
}

/// 429 with `Retry-After` when `key` is over its quota.
pub fn check(limiter: &DefaultKeyedRateLimiter<String>, key: &str) -> Result<(), ApiError> {
    limiter.check_key(&key.to_string()).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        ApiError::rate_limited(wait.as_secs() + 1)
    })
}

impl RateLimits {
    /// Forgets keys whose limits have fully recovered (bounded memory).
    pub fn shrink(&self) {
        for limiter in [
            &self.sign_in_per_email,
            &self.sign_in_per_ip,
            &self.otp_per_email,
            &self.otp_per_ip,
            &self.messages_per_user,
        ] {
            limiter.retain_recent();
        }
    }
}
