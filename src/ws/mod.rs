//! The WebSocket `/v1/ws` (contract section 12): frames, the per-socket session, and the hub
//! that delivers the push feed to this instance's sockets.

pub mod frames;
pub mod hub;
pub mod presence;
pub mod session;

pub use session::route;
