//! Outside providers behind traits, each with a built-in implementation for local use.
//! So far: mail (`.eml` files, or SMTP).

pub mod background;
pub mod mail;
pub mod s3;
pub mod storage;
