//! Authentication: password hashing, JWT access/refresh tokens, one-time codes, and the
//! request extractor that turns a bearer token into a signed-in user.

pub mod extractor;
pub mod otp;
pub mod password;
pub mod tokens;

pub use extractor::Authenticated;
pub use tokens::TokenKeys;
