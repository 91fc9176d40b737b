//! Test support shared by every test folder of the workspace, so the server's, the SDK's, the
//! CLI's and the bench's tests start Herald, mint tokens and talk to it the same way.
//!
//! Most tests want [`prelude`]: `use herald_testkit::prelude::*;`. The Redis harnesses
//! ([`redis`], [`cluster`], [`proxy`]) are imported by path, as they are used by few tests.
// Test support: a failed unwrap is a failed test, with the panic message saying where.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;
pub mod config;
pub mod frames;
pub mod presence_view;
pub mod process;
pub mod proxy;
pub mod raw_ws;
pub mod redis;
#[cfg(feature = "client")]
pub mod sdk;
pub mod server;
pub mod streams;
pub mod tls;
pub mod tokens;
pub mod webhook_receiver;
pub mod ws;

/// Everything a test file usually needs, for one glob import.
pub mod prelude {
    pub use crate::config::*;
    pub use crate::frames::*;
    pub use crate::presence_view::PresenceView;
    pub use crate::raw_ws::*;
    #[cfg(feature = "client")]
    pub use crate::sdk::*;
    pub use crate::server::TestServer;
    pub use crate::streams::*;
    pub use crate::tls::*;
    pub use crate::tokens::*;
    pub use crate::ws::*;
}
