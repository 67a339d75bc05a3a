//! Outside providers behind traits, each with a built-in implementation for local use.
//! Mail (`.eml` files, or SMTP), background checks, file storage (local or S3), payments
//! (sandbox or Stripe) and payouts (sandbox).

pub mod background;
pub mod mail;
pub mod payments;
pub mod payouts;
pub mod s3;
pub mod storage;
