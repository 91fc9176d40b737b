//! Newtypes for the identifiers that flow through the server, so a peer id can never be passed
//! where a channel or an app id is expected.

use std::fmt;
use std::sync::Arc;

macro_rules! shared_str_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn new(s: impl Into<Arc<str>>) -> Self {
                Self(s.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

shared_str_id!(
    /// A tenant. Channels and peers of different apps never see each other.
    AppId
);
shared_str_id!(
    /// A peer: the JWT `sub`, or a fresh UUID for a publishable-key connection.
    PeerId
);
shared_str_id!(
    /// A channel name (or a wildcard subscription pattern), exactly as the client sent it.
    ChannelName
);

/// One WebSocket connection, unique for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}
