//! herald-bench: drives a running Herald or Socket.IO server over real WebSockets on loopback
//! and measures fan-out, idle connections, presence churn, presence in big rooms and direct
//! messages.
//!
//! `bench/run.sh` runs the whole comparison; `BENCHMARKS.md` has the results.

pub mod chat;
pub mod digits;
pub mod encode;
pub mod floor;
pub mod procstat;
pub mod proto;
pub mod pusher;
pub mod report;
pub mod scenarios;
pub mod soak;
pub mod storm;
pub mod suite;
pub mod token;
pub mod ws;
