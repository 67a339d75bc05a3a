//! Outside providers behind traits, each with a built-in implementation for local use.
//! Mail (`.eml` files, or SMTP), background checks, file storage (local or S3), payments
//! (sandbox or Stripe), payouts (sandbox) and push notifications (JSON files, or FCM).

pub mod background;
pub mod mail;
pub mod payments;
pub mod payouts;
pub mod push;
pub mod s3;
pub mod storage;
