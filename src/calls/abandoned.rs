//! Running calls that one side can no longer reach: every socket of theirs closed (the app died,
//! the phone lost the network, the instance crashed). After a grace period for reconnecting the
//! server ends the call as of the moment it saw them gone, so nobody pays for time nobody
//! could talk. Each instance keeps its own observations; the Call aggregate ends a call once.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};

/// How long a side may be gone before the call ends.
pub const GRACE: Duration = Duration::seconds(60);

#[derive(Debug, Default)]
pub struct Abandoned {
    /// Running calls with a side gone, and since when (as seen here).
    gone_since: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl Abandoned {
    /// Takes in the running calls and whether both sides are connected now; returns the calls
    /// with a side gone for at least `grace`, each with the moment it was first seen gone.
    pub fn observe(
        &self,
        running: &[(String, bool)],
        now: DateTime<Utc>,
        grace: Duration,
    ) -> Vec<(String, DateTime<Utc>)> {
        // A poisoned lock only means a panic elsewhere; the map itself is still consistent.
        let mut gone_since = self.gone_since.lock().unwrap_or_else(|p| p.into_inner());
        gone_since.retain(|id, _| running.iter().any(|(call, _)| call == id));
        let mut abandoned = Vec::new();
        for (call, connected) in running {
            if *connected {
                gone_since.remove(call);
                continue;
            }
            let since = *gone_since.entry(call.clone()).or_insert(now);
            if now - since >= grace {
                abandoned.push((call.clone(), since));
            }
        }
        abandoned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + seconds, 0).expect("time")
    }

    #[test]
    fn a_call_is_abandoned_only_after_a_whole_grace_period_gone() {
        let watch = Abandoned::default();
        let gone = |connected| vec![("call".to_string(), connected)];
        assert!(watch.observe(&gone(false), t(0), GRACE).is_empty());
        assert!(watch.observe(&gone(false), t(59), GRACE).is_empty());
        // Back in time: the clock restarts for the next loss.
        assert!(watch.observe(&gone(true), t(60), GRACE).is_empty());
        assert!(watch.observe(&gone(false), t(70), GRACE).is_empty());
        assert!(watch.observe(&gone(false), t(100), GRACE).is_empty());
        assert_eq!(
            watch.observe(&gone(false), t(130), GRACE),
            vec![("call".to_string(), t(70))]
        );
        // A call that is no longer running is forgotten.
        assert!(watch.observe(&[], t(131), GRACE).is_empty());
        assert!(watch.observe(&gone(false), t(200), GRACE).is_empty());
    }
}
