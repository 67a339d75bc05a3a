//! Field checks that collect every problem into the 400 `details` map at once.

use serde_json::{Map, Value};

use super::envelope::ApiError;

#[derive(Default)]
pub struct Problems(Map<String, Value>);

impl Problems {
    pub fn add(&mut self, field: &str, problem: impl Into<String>) {
        self.0
            .insert(field.to_string(), Value::String(problem.into()));
    }

    /// The value of a required field, or a "is required" problem.
    pub fn required<'a>(&mut self, field: &str, value: &'a Option<String>) -> &'a str {
        match value.as_deref() {
            Some(v) if !v.trim().is_empty() => v,
            _ => {
                self.add(field, "is required");
                ""
            }
        }
    }

    /// `Err(400 invalid_input)` when anything was added.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(Value::Object(self.0)))
        }
    }

    pub fn check_email(&mut self, field: &str, email: &str) {
        if !email.is_empty() && !is_plausible_email(email) {
            self.add(field, "is not a valid email address");
        }
    }

    /// A required email, trimmed and checked.
    pub fn email(&mut self, field: &str, value: &Option<String>) -> String {
        let email = self.required(field, value).trim().to_string();
        self.check_email(field, &email);
        email
    }

    /// A required one-time code: exactly six digits.
    pub fn otp_code(&mut self, field: &str, value: &Option<String>) -> String {
        let code = self.required(field, value).trim().to_string();
        if !code.is_empty() && !crate::auth::otp::is_well_formed(&code) {
            self.add(field, "must be 6 digits");
        }
        code
    }

    pub fn check_length(&mut self, field: &str, value: &str, min: usize, max: usize) {
        let n = value.trim().chars().count();
        if n < min || n > max {
            self.add(field, format!("must be {min} to {max} characters"));
        } else if value.contains('\0') {
            // PostgreSQL text cannot hold U+0000: a sealed name or bio with one was stored,
            // then stopped the projector for good when it wrote the plaintext (every later
            // command answered 503).
            self.add(field, "must not contain the NUL character (U+0000)");
        }
    }
}

/// A pragmatic check: one `@`, a non-empty local part, a dotted domain, no spaces, ≤ 254 chars.
/// Whether the address exists is proven by the verify-email code, not by syntax.
pub fn is_plausible_email(email: &str) -> bool {
    let email = email.trim();
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    email.len() <= 254
        && !local.is_empty()
        && !local.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A non-empty string field of a WebSocket frame (or JSON body).
pub fn required_text(frame: &Value, field: &str) -> Result<String, ApiError> {
    match frame.get(field) {
        Some(Value::String(v)) if !v.is_empty() && !v.contains('\0') => Ok(v.clone()),
        _ => Err(ApiError::invalid(
            serde_json::json!({ field: "is required (a string without NUL characters)" }),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert!(is_plausible_email("ann@example.com"));
        assert!(is_plausible_email(" Ann.B+x@mail.example.co.uk "));
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "ann@example",
            "a b@example.com",
            "a@b@c.com",
        ] {
            assert!(!is_plausible_email(bad), "{bad}");
        }
    }
}
