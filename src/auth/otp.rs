//! One-time codes: six random digits, mailed; only keyed hashes reach the event log.

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum OtpPurpose {
    VerifyEmail,
    ResetPassword,
}

impl OtpPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            OtpPurpose::VerifyEmail => "verify-email",
            OtpPurpose::ResetPassword => "reset-password",
        }
    }
}

pub fn generate_code() -> String {
    format!("{:06}", rand::thread_rng().gen_range(0..1_000_000))
}

/// Keyed hash, hex. Domain-separated by `label` so one key serves several uses.
pub fn keyed_hash(key: &[u8], label: &str, parts: &[&str]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(label.as_bytes());
    for part in parts {
        mac.update(&[0]);
        mac.update(part.as_bytes());
    }
    hex::encode(mac.finalize().into_bytes())
}

/// The OTP aggregate id for one (email, purpose).
pub fn aggregate_id(key: &[u8], normalized_email: &str, purpose: OtpPurpose) -> String {
    keyed_hash(key, "otp-id", &[normalized_email, purpose.as_str()])
}

pub fn code_hash(key: &[u8], normalized_email: &str, purpose: OtpPurpose, code: &str) -> String {
    keyed_hash(
        key,
        "otp-code",
        &[normalized_email, purpose.as_str(), code.trim()],
    )
}

/// A well-formed code is exactly six ASCII digits.
pub fn is_well_formed(code: &str) -> bool {
    code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits() {
        for _ in 0..100 {
            assert!(is_well_formed(&generate_code()));
        }
        assert!(!is_well_formed("12345"));
        assert!(!is_well_formed("12345a"));
    }

    #[test]
    fn hashes_depend_on_key_label_and_every_part() {
        let a = code_hash(b"k", "a@x.com", OtpPurpose::VerifyEmail, "123456");
        assert_ne!(
            a,
            code_hash(b"k2", "a@x.com", OtpPurpose::VerifyEmail, "123456")
        );
        assert_ne!(
            a,
            code_hash(b"k", "a@x.com", OtpPurpose::ResetPassword, "123456")
        );
        assert_ne!(
            a,
            code_hash(b"k", "a@x.com", OtpPurpose::VerifyEmail, "123457")
        );
        assert_ne!(a, aggregate_id(b"k", "a@x.com", OtpPurpose::VerifyEmail));
    }
}
