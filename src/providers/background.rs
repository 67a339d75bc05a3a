//! Background checks of volunteers. The built-in sandbox decides at once: it completes every
//! check, except for the last name `Fail`, which fails (so both paths can be tried locally).
//! A real provider (e.g. Checkr) would answer through a webhook; the trait keeps that shape:
//! `submit` starts a check, and the outcome is reported back with the check's id.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkLocation {
    pub country_code: String,
    pub state_code: String,
    pub city: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackgroundCheckRequest {
    pub first_name: String,
    pub middle_name: Option<String>,
    pub last_name: String,
    pub zip_code: String,
    pub work_locations: Vec<WorkLocation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    Clear,
    Failed,
}

#[async_trait::async_trait]
pub trait BackgroundChecks: Send + Sync {
    /// Runs (or starts) a check; the sandbox answers at once.
    async fn check(&self, request: &BackgroundCheckRequest) -> anyhow::Result<CheckOutcome>;
}

pub struct SandboxChecks;

#[async_trait::async_trait]
impl BackgroundChecks for SandboxChecks {
    async fn check(&self, request: &BackgroundCheckRequest) -> anyhow::Result<CheckOutcome> {
        if request.last_name.trim().eq_ignore_ascii_case("fail") {
            Ok(CheckOutcome::Failed)
        } else {
            Ok(CheckOutcome::Clear)
        }
    }
}
