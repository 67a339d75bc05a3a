//! Payout providers: send a withdrawal's money to the volunteer's PayPal account.
//!
//! The built-in sandbox settles at once: every payout succeeds, except to PayPal emails ending in
//! `@fail.test`, which fail (so the refund path can be tried locally). A provider must be
//! idempotent by `transaction_id`: a restarted server resends payouts it never saw settled.
//! No real provider is built yet (PayPal Payouts would be one); see the README.

#[derive(Debug, Clone)]
pub struct PayoutRequest {
    pub transaction_id: String,
    pub paypal_email: String,
    pub amount_cents: i64,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayoutResult {
    Paid,
    Failed(String),
}

#[async_trait::async_trait]
pub trait PayoutProvider: Send + Sync {
    async fn send(&self, payout: &PayoutRequest) -> anyhow::Result<PayoutResult>;
}

pub struct SandboxPayouts;

#[async_trait::async_trait]
impl PayoutProvider for SandboxPayouts {
    async fn send(&self, payout: &PayoutRequest) -> anyhow::Result<PayoutResult> {
        if payout
            .paypal_email
            .trim()
            .to_ascii_lowercase()
            .ends_with("@fail.test")
        {
            Ok(PayoutResult::Failed(
                "the PayPal account refused the payout".into(),
            ))
        } else {
            Ok(PayoutResult::Paid)
        }
    }
}
