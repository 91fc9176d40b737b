//! `[history]`: which channels keep their recent messages, for how long, and how many a new
//! subscriber is sent again (rewind). With no `[[history.channels]]` no channel keeps history
//! and a publish costs what it did before history existed.

use serde::{Deserialize, Serialize};

use super::validate::check_patterns;
use super::{invalid, ConfigError};

/// The largest `max_messages` of a group: a page of REST history is at most 1000, and a ring
/// this long is already 100 pages.
pub const MAX_HISTORY_MESSAGES: usize = 100_000;
/// The largest `rewind`: what a subscribe may queue at once, next to the queue's own bound.
pub const MAX_REWIND: usize = 1000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// `"memory"`, or `"disk"`: the memory store made durable (single node, memory engine),
    /// which survives restarts.
    pub store: String,
    /// The directory where `store = "disk"` keeps its database (created if missing).
    pub path: String,
    /// Node-wide cap of the memory store, and of the disk store (which holds the same
    /// entries); past it the oldest entries of any channel go first.
    pub max_memory_bytes: u64,
    /// Channel groups that keep history. The first group whose patterns match applies.
    pub channels: Vec<HistoryChannels>,

    // Lossless reconnect (stable peer ids only; see `resume/`).
    /// How long a stable peer that dropped keeps its confirmed positions (and its inbox);
    /// 0 turns transparent resume and the direct inbox off.
    pub resume_window_secs: u64,
    /// How long after unconfirmed traffic a connection gets its watermark ping.
    pub resume_confirm_ms: u64,
    /// The most messages one resume replays; a longer gap fails as if retention had passed.
    pub resume_max_messages: usize,
    /// How long a direct to a dropped peer waits for it (within its resume window).
    pub direct_inbox_secs: u64,
    /// Directs one dropped peer's inbox holds at most.
    pub direct_inbox_max_messages: usize,
    /// Bytes of direct frames one dropped peer's inbox holds at most.
    pub direct_inbox_max_bytes: usize,
}

/// One `[[history.channels]]` group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryChannels {
    /// Concrete channels these glob patterns match (the syntax of key `channel_patterns`).
    pub patterns: Vec<String>,
    /// Messages kept per channel.
    #[serde(default = "default_max_messages")]
    pub max_messages: usize,
    /// Messages older than this are dropped.
    #[serde(default = "default_max_age_secs")]
    pub max_age_secs: u64,
    /// On subscribe, up to this many recent messages are sent (0 = none).
    #[serde(default)]
    pub rewind: usize,
}

fn default_max_messages() -> usize {
    1000
}

fn default_max_age_secs() -> u64 {
    604_800
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            store: "memory".into(),
            path: ".herald/history".into(),
            max_memory_bytes: 256 * 1024 * 1024,
            channels: Vec::new(),
            resume_window_secs: 30,
            resume_confirm_ms: 1000,
            resume_max_messages: 1000,
            direct_inbox_secs: 30,
            direct_inbox_max_messages: 100,
            direct_inbox_max_bytes: 256 * 1024,
        }
    }
}

impl HistoryConfig {
    /// Dev mode (no apps configured): every channel keeps history and rewinds 50, so the demo
    /// shows it; groups the operator configured are kept as they are.
    pub fn enable_for_dev(&mut self) {
        if self.channels.is_empty() {
            self.channels.push(HistoryChannels {
                patterns: vec!["**".into()],
                max_messages: default_max_messages(),
                max_age_secs: default_max_age_secs(),
                rewind: 50,
            });
        }
    }

    /// `outbound_queue_frames` bounds what a subscribe may queue: ack, snapshot and rewind.
    pub(super) fn validate(&self, outbound_queue_frames: usize) -> Result<(), ConfigError> {
        match self.store.as_str() {
            "memory" => {}
            "disk" if self.path.trim().is_empty() => {
                return Err(invalid(
                    "history.path",
                    "must name a directory for store = \"disk\"",
                ))
            }
            "disk" => {}
            _ => return Err(invalid("history.store", "must be \"memory\" or \"disk\"")),
        }
        if self.max_memory_bytes < 64 * 1024 {
            return Err(invalid(
                "history.max_memory_bytes",
                "must be at least 65536",
            ));
        }
        self.validate_resume()?;
        for (i, group) in self.channels.iter().enumerate() {
            let field = |name: &str| format!("history.channels[{i}].{name}");
            check_patterns(&group.patterns, &field("patterns"))?;
            if !(1..=MAX_HISTORY_MESSAGES).contains(&group.max_messages) {
                return Err(invalid(
                    field("max_messages"),
                    format!("must be between 1 and {MAX_HISTORY_MESSAGES}"),
                ));
            }
            if group.max_age_secs == 0 || group.max_age_secs > 10 * 365 * 86_400 {
                return Err(invalid(
                    field("max_age_secs"),
                    "must be between 1 and 315360000 (ten years)",
                ));
            }
            let queue_room = outbound_queue_frames.saturating_sub(2);
            let most = MAX_REWIND.min(group.max_messages).min(queue_room);
            if group.rewind > most {
                return Err(invalid(
                    field("rewind"),
                    format!(
                        "must be at most {most} (max_messages, {MAX_REWIND}, and \
                         limits.outbound_queue_frames minus the ack and the snapshot)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl HistoryConfig {
    /// The resume keys; the watermark pings at most 10 times a second.
    fn validate_resume(&self) -> Result<(), ConfigError> {
        if self.resume_window_secs > 3600 {
            return Err(invalid(
                "history.resume_window_secs",
                "must be at most 3600",
            ));
        }
        if !(100..=60_000).contains(&self.resume_confirm_ms) {
            return Err(invalid(
                "history.resume_confirm_ms",
                "must be between 100 and 60000",
            ));
        }
        if self.resume_max_messages > 10_000 {
            return Err(invalid(
                "history.resume_max_messages",
                "must be at most 10000 (a node also caps it to limits.outbound_queue_frames - 2)",
            ));
        }
        if self.direct_inbox_secs > 3600 {
            return Err(invalid(
                "history.direct_inbox_secs",
                "must be at most 3600 (a direct also waits no longer than its peer's window)",
            ));
        }
        if self.direct_inbox_max_messages > 10_000 {
            return Err(invalid(
                "history.direct_inbox_max_messages",
                "must be at most 10000",
            ));
        }
        if self.direct_inbox_max_bytes > 64 * 1024 * 1024 {
            return Err(invalid(
                "history.direct_inbox_max_bytes",
                "must be at most 67108864",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::config::Config;

    #[test]
    fn groups_parse_with_defaults_and_are_validated() {
        let ok = "[history]\nmax_memory_bytes = 1048576\n\n[[history.channels]]\n\
                  patterns = [\"room-*\", \"lobby\"]\nrewind = 20\n";
        let config = Config::from_toml(ok).unwrap();
        config.validate().unwrap();
        let group = &config.history.channels[0];
        assert_eq!(
            (group.max_messages, group.max_age_secs, group.rewind),
            (1000, 604_800, 20)
        );
        assert_eq!(config.history.store, "memory");
        for (text, field) in [
            ("[history]\nstore = \"disk\"\npath = \" \"\n", "history.path"),
            ("[history]\nstore = \"sqlite\"\n", "history.store"),
            ("[history]\nmax_memory_bytes = 10\n", "history.max_memory_bytes"),
            (
                "[[history.channels]]\npatterns = []\n",
                "history.channels[0].patterns",
            ),
            (
                "[[history.channels]]\npatterns = [\"a\"]\nmax_messages = 0\n",
                "history.channels[0].max_messages",
            ),
            (
                "[[history.channels]]\npatterns = [\"a\"]\nmax_age_secs = 0\n",
                "history.channels[0].max_age_secs",
            ),
            (
                "[[history.channels]]\npatterns = [\"a\"]\nmax_messages = 10\nrewind = 11\n",
                "history.channels[0].rewind",
            ),
            (
                "[history]\nresume_confirm_ms = 10\n",
                "history.resume_confirm_ms",
            ),
            (
                "[history]\nresume_max_messages = 20000\n",
                "history.resume_max_messages",
            ),
            (
                "[history]\nresume_window_secs = 99999\n",
                "history.resume_window_secs",
            ),
            (
                "[history]\ndirect_inbox_secs = 99999\n",
                "history.direct_inbox_secs",
            ),
            (
                "[limits]\noutbound_queue_frames = 16\n[[history.channels]]\npatterns = [\"a\"]\nrewind = 15\n",
                "history.channels[0].rewind",
            ),
        ] {
            let err = Config::from_toml(text).unwrap().validate().unwrap_err();
            assert!(err.to_string().contains(field), "{text}: {err}");
        }
        let off = Config::from_toml("[history]\nresume_window_secs = 0\n").unwrap();
        off.validate().unwrap();
        let disk = Config::from_toml("[history]\nstore = \"disk\"\n").unwrap();
        disk.validate().unwrap();
        assert_eq!(disk.history.path, ".herald/history");
        assert!(
            Config::from_toml("[[history.channels]]\npatterns = [\"a\"]\nrewnd = 3\n").is_err()
        );
    }

    #[test]
    fn dev_mode_keeps_history_everywhere_unless_configured() {
        let mut config = Config::default();
        config.history.enable_for_dev();
        assert_eq!(config.history.channels[0].patterns, vec!["**".to_string()]);
        assert_eq!(config.history.channels[0].rewind, 50);
        config.validate().unwrap();
        let mut own = Config::from_toml("[[history.channels]]\npatterns = [\"a\"]\n").unwrap();
        own.history.enable_for_dev();
        assert_eq!(own.history.channels.len(), 1);
        assert_eq!(own.history.channels[0].rewind, 0);
    }
}
