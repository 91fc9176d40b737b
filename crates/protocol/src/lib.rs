//! The Metered Realtime Messaging wire protocol, as Herald speaks it.
//!
//! Pure types and rules: frames, error and close codes, name validation, glob patterns, JWT
//! claims and HS256 signing. No I/O and no async runtime, so every rule is unit-testable.

pub mod actions;
pub mod claims;
pub mod codes;
pub mod frames;
pub mod glob;
pub mod json_depth;
pub mod json_escapes;
pub mod jwt;
pub mod validate;

pub use actions::{Action, ActionSet};
pub use claims::Claims;
pub use codes::{CloseCode, ErrorCode};
pub use frames::{
    encode, parse_client_frame, ClientFrame, ClientOp, FrameError, Position, PresenceEntry,
    StreamPosition,
};

/// `welcome.maxMessageSize`: the payload size the SDKs pre-check against.
pub const MAX_MESSAGE_SIZE: usize = 65536;
