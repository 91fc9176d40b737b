//! The Herald server library: a Metered Realtime Messaging server.
//!
//! Start at [`server::run`]. The path of a frame: [`http`] upgrades the socket and
//! authenticates ([`auth`]), [`session`] runs one task per connection, and the [`engine`]
//! does presence and fan-out. ARCHITECTURE.md at the repository root tells the whole story.

pub mod accept;
pub mod admin;
pub mod auth;
pub mod clock;
pub mod close;
pub mod config;
pub mod conn;
pub mod devkeys;
pub mod engine;
pub mod errors;
pub mod history;
pub mod http;
pub mod ids;
pub mod limits;
pub mod metrics;
mod redb_file;
pub mod rest;
mod resubscribe;
pub mod resume;
pub mod server;
pub mod session;
pub mod state;
mod sync;
pub mod tls;
pub mod web;
pub mod webhooks;

pub use config::Config;
pub use server::{run, run_with_engine, ServerError};
