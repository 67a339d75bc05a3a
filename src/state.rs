//! What every handler and socket shares.

use std::sync::Arc;

use crate::auth::TokenKeys;
use crate::clock::Clock;
use crate::config::Settings;
use crate::providers::background::BackgroundChecks;
use crate::providers::mail::Mailer;
use crate::providers::payments::PaymentProvider;
use crate::providers::payouts::PayoutProvider;
use crate::providers::push::PushProvider;
use crate::providers::storage::FileStore;
use crate::ratelimit::RateLimits;
use crate::store::Store;
use crate::ws::hub::Hub;

pub struct AppState {
    pub settings: Settings,
    pub store: Store,
    pub tokens: TokenKeys,
    /// Key of the keyed hashes (email claims, OTP ids and codes).
    pub hash_key: Vec<u8>,
    pub mailer: Box<dyn Mailer>,
    pub background_checks: Box<dyn BackgroundChecks>,
    pub files: FileStore,
    pub payments: Box<dyn PaymentProvider>,
    pub payouts: Box<dyn PayoutProvider>,
    pub push: Arc<dyn PushProvider>,
    /// How this server reaches itself (the sandbox posts its webhooks there).
    pub internal_url: String,
    pub limits: RateLimits,
    pub hub: Arc<Hub>,
    pub clock: Clock,
    /// Running calls with a side gone, as this instance saw them.
    pub abandoned_calls: crate::calls::abandoned::Abandoned,
}
