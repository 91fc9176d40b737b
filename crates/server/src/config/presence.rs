//! `[presence]`: presence policy per channel pattern. Today: the occupancy mode of large rooms
//! (`[[presence.channels]]`), where a room above its roster cap sends counts instead of
//! per-member deltas, so a watcher's traffic stays bounded however many peers come and go.

use serde::{Deserialize, Serialize};

use super::validate::check_patterns;
use super::{invalid, ConfigError};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Channel groups with a roster cap. The first group whose patterns match a channel
    /// applies; a channel no group matches has no cap.
    pub channels: Vec<PresenceChannels>,
}

/// One `[[presence.channels]]` group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceChannels {
    /// Concrete channels these glob patterns match (the syntax of key `channel_patterns`).
    pub patterns: Vec<String>,
    /// Above this many members the channel is in occupancy mode: snapshots list at most this
    /// many, and watchers get the count (at most once a second) instead of joined/left.
    pub max_roster: usize,
}

/// The most a roster cap may be: a snapshot that large is already near the SDKs' 1 MiB
/// inbound frame limit with metadata.
pub const MAX_ROSTER_CAP: usize = 10_000;

impl PresenceConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (i, group) in self.channels.iter().enumerate() {
            check_patterns(&group.patterns, &format!("presence.channels[{i}].patterns"))?;
            if group.max_roster > MAX_ROSTER_CAP {
                return Err(invalid(
                    format!("presence.channels[{i}].max_roster"),
                    format!("must be at most {MAX_ROSTER_CAP}"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::config::Config;

    #[test]
    fn groups_parse_and_are_validated() {
        let ok = "[[presence.channels]]\npatterns = [\"stadium-*\"]\nmax_roster = 1000\n";
        let config = Config::from_toml(ok).unwrap();
        config.validate().unwrap();
        assert_eq!(config.presence.channels[0].max_roster, 1000);
        for (text, field) in [
            (
                "[[presence.channels]]\npatterns = []\nmax_roster = 3\n",
                "presence.channels[0].patterns",
            ),
            (
                "[[presence.channels]]\npatterns = [\"a\\u0001\"]\nmax_roster = 3\n",
                "presence.channels[0].patterns",
            ),
            (
                "[[presence.channels]]\npatterns = [\"a\"]\nmax_roster = 10001\n",
                "presence.channels[0].max_roster",
            ),
        ] {
            let err = Config::from_toml(text).unwrap().validate().unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
        let typo = "[[presence.channels]]\npatterns = [\"a\"]\nmax_rooster = 3\n";
        assert!(Config::from_toml(typo).is_err());
        let missing = "[[presence.channels]]\npatterns = [\"a\"]\n";
        assert!(Config::from_toml(missing).is_err());
    }
}
