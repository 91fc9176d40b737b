//! The cross-field rules a config must pass before a node starts; each error names the first
//! bad field.

use herald_protocol::validate::is_valid_channel;

use super::{invalid, Config, ConfigError};

/// The secret in dist/herald.toml, which the Debian package replaces with a random one on
/// install: a copy of that file used as is must not run with a secret everyone can read.
const PACKAGED_SECRET_PLACEHOLDER: &str = "@GENERATED_AT_INSTALL@";

impl Config {
    /// Checks every cross-field rule; the error names the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.tls.validate()?;
        let l = &self.limits;
        if l.max_frame_bytes < 1024 {
            return Err(invalid("limits.max_frame_bytes", "must be at least 1024"));
        }
        if l.max_message_size == 0 || l.max_message_size > l.max_frame_bytes {
            return Err(invalid(
                "limits.max_message_size",
                "must be between 1 and limits.max_frame_bytes",
            ));
        }
        if l.max_json_depth == 0 || l.max_json_depth > 512 {
            return Err(invalid(
                "limits.max_json_depth",
                "must be between 1 and 512",
            ));
        }
        if l.max_channels_per_connection == 0 {
            return Err(invalid(
                "limits.max_channels_per_connection",
                "must be at least 1",
            ));
        }
        if !(l.rate_per_second > 0.0 && l.rate_per_second.is_finite()) {
            return Err(invalid(
                "limits.rate_per_second",
                "must be a positive number",
            ));
        }
        if !(l.rate_burst >= 1.0 && l.rate_burst.is_finite()) {
            return Err(invalid("limits.rate_burst", "must be at least 1"));
        }
        if l.outbound_queue_frames < 8 {
            return Err(invalid(
                "limits.outbound_queue_frames",
                "must be at least 8",
            ));
        }
        if l.outbound_queue_bytes < 64 * 1024 {
            return Err(invalid(
                "limits.outbound_queue_bytes",
                "must be at least 65536",
            ));
        }
        if l.node_outbound_bytes > 0 && l.node_outbound_bytes < l.outbound_queue_bytes {
            return Err(invalid(
                "limits.node_outbound_bytes",
                "must be 0 (unlimited) or at least limits.outbound_queue_bytes",
            ));
        }
        if l.connect_attempts_per_ip > 0 && l.connect_window_secs == 0 {
            return Err(invalid("limits.connect_window_secs", "must be at least 1"));
        }
        if !(10..=600_000).contains(&l.http_header_read_timeout_ms) {
            return Err(invalid(
                "limits.http_header_read_timeout_ms",
                "must be between 10 and 600000",
            ));
        }
        if l.http_idle_timeout_secs == 0 {
            return Err(invalid(
                "limits.http_idle_timeout_secs",
                "must be at least 1",
            ));
        }
        if l.connect_limiter_max_entries == 0 {
            return Err(invalid(
                "limits.connect_limiter_max_entries",
                "must be at least 1",
            ));
        }
        if l.max_wildcard_subscriptions_per_connection == 0 {
            return Err(invalid(
                "limits.max_wildcard_subscriptions_per_connection",
                "must be at least 1 (turn wildcards off with wildcard_subscriptions = false)",
            ));
        }
        if l.max_wildcard_patterns_per_app == 0 {
            return Err(invalid(
                "limits.max_wildcard_patterns_per_app",
                "must be at least 1",
            ));
        }
        let t = &self.timing;
        if t.ping_interval_secs == 0 {
            return Err(invalid("timing.ping_interval_secs", "must be at least 1"));
        }
        if t.shutdown_deadline_secs == 0 {
            return Err(invalid(
                "timing.shutdown_deadline_secs",
                "must be at least 1",
            ));
        }
        if !matches!(self.log.format.as_str(), "pretty" | "json") {
            return Err(invalid("log.format", "must be \"pretty\" or \"json\""));
        }
        for (i, server) in self.turn.ice_servers.iter().enumerate() {
            let ok = !server.urls.is_empty()
                && server.urls.iter().all(|u| {
                    let lower = u.to_ascii_lowercase();
                    u.len() <= 512
                        && ["stun:", "stuns:", "turn:", "turns:"]
                            .iter()
                            .any(|s| lower.starts_with(s))
                });
            if !ok {
                return Err(invalid(
                    format!("turn.ice_servers[{i}].urls"),
                    "need 1+ urls starting with stun:, stuns:, turn: or turns:",
                ));
            }
        }
        let e = &self.engine;
        if !matches!(e.kind.as_str(), "memory" | "redis") {
            return Err(invalid("engine.kind", "must be \"memory\" or \"redis\""));
        }
        if e.bus_queue_messages < 16 {
            return Err(invalid("engine.bus_queue_messages", "must be at least 16"));
        }
        if e.bus_queue_bytes < 65_536 {
            return Err(invalid("engine.bus_queue_bytes", "must be at least 65536"));
        }
        let urls: Vec<&str> = if e.redis_cluster {
            e.redis_url.split(',').map(str::trim).collect()
        } else {
            vec![e.redis_url.as_str()]
        };
        if e.kind == "redis"
            && !urls
                .iter()
                .all(|u| u.starts_with("redis://") || u.starts_with("rediss://"))
        {
            return Err(invalid(
                "engine.redis_url",
                "must start with redis:// or rediss:// (with redis_cluster, each comma-separated seed)",
            ));
        }
        if e.key_prefix.contains(['{', '}']) {
            // A hash tag in the prefix would put every key in one Redis Cluster slot.
            return Err(invalid("engine.key_prefix", "must not contain '{' or '}'"));
        }
        if e.lease_ttl_ms < 1000 {
            return Err(invalid("engine.lease_ttl_ms", "must be at least 1000"));
        }
        if !e
            .node_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || e.node_id.len() > 64
        {
            return Err(invalid(
                "engine.node_id",
                "use at most 64 of [A-Za-z0-9._-]",
            ));
        }
        self.presence.validate()?;
        self.history.validate(l.outbound_queue_frames)?;
        self.webhooks.validate()?;
        let mut key_ids = std::collections::HashSet::new();
        let mut app_ids = std::collections::HashSet::new();
        for (a, app) in self.apps.iter().enumerate() {
            let field = |rest: &str| format!("apps[{a}]{rest}");
            if app.id.is_empty() || !app_ids.insert(app.id.as_str()) {
                return Err(invalid(field(".id"), "must be non-empty and unique"));
            }
            if app.id.len() > 64
                || !app
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(invalid(field(".id"), "use at most 64 of [A-Za-z0-9._-]"));
            }
            for (w, hook) in app.webhooks.iter().enumerate() {
                hook.validate(&field(&format!(".webhooks[{w}]")))?;
            }
            for (k, key) in app.secret_keys.iter().enumerate() {
                let f = |rest: &str| field(&format!(".secret_keys[{k}]{rest}"));
                if key.id.is_empty() || !key_ids.insert(key.id.as_str()) {
                    return Err(invalid(
                        f(".id"),
                        "must be non-empty and unique across apps",
                    ));
                }
                if key.secret.len() < 16 {
                    return Err(invalid(f(".secret"), "must be at least 16 characters"));
                }
                if key.secret == PACKAGED_SECRET_PLACEHOLDER {
                    return Err(invalid(
                        f(".secret"),
                        "is the packaged config's placeholder: set a random secret (the .deb does on install)",
                    ));
                }
                check_patterns(&key.channel_patterns, &f(".channel_patterns"))?;
            }
            for (k, key) in app.publishable_keys.iter().enumerate() {
                let f = |rest: &str| field(&format!(".publishable_keys[{k}]{rest}"));
                if !key.id.starts_with("pk_") || !key_ids.insert(key.id.as_str()) {
                    return Err(invalid(
                        f(".id"),
                        "must start with pk_ and be unique across apps",
                    ));
                }
                check_patterns(&key.channel_patterns, &f(".channel_patterns"))?;
                for origin in &key.allowed_origins {
                    if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                        return Err(invalid(
                            f(".allowed_origins"),
                            format!("{origin:?} is not an http(s) origin"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

pub(super) fn check_patterns(patterns: &[String], field: &str) -> Result<(), ConfigError> {
    if patterns.is_empty() {
        return Err(invalid(field, "needs at least one pattern"));
    }
    match patterns.iter().find(|p| !is_valid_channel(p)) {
        Some(bad) => Err(invalid(
            field,
            format!("{bad:?} is not a valid channel pattern"),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::config::Config;

    #[test]
    fn json_depth_is_bounded() {
        for bad in [0, 513] {
            let text = format!("[limits]\nmax_json_depth = {bad}\n");
            let err = Config::from_toml(&text).unwrap().validate().unwrap_err();
            assert!(err.to_string().contains("limits.max_json_depth"), "{err}");
        }
        let ok = Config::from_toml("[limits]\nmax_json_depth = 512\n").unwrap();
        ok.validate().unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let err = Config::from_toml("[limits]\nmax_channels_per_connection = 0\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("limits.max_channels_per_connection"),
            "{err}"
        );
        let err = Config::from_toml("[limits]\nmax_chanels = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_chanels"), "{err}");
        let text =
            "[[apps]]\nid = \"a\"\n[[apps.secret_keys]]\nid = \"sk_id_1\"\nsecret = \"short\"\n";
        let err = Config::from_toml(text).unwrap().validate().unwrap_err();
        assert!(
            err.to_string().contains("apps[0].secret_keys[0].secret"),
            "{err}"
        );
    }

    #[test]
    fn redis_cluster_seeds_and_prefix_are_checked() {
        let ok = "[engine]\nkind = \"redis\"\nredis_cluster = true\nredis_url = \"redis://a:7000, redis://b:7000\"\n";
        assert!(Config::from_toml(ok).unwrap().validate().is_ok());
        let bad_seed = ok.replace("redis://b", "http://b");
        let err = Config::from_toml(&bad_seed)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("engine.redis_url"), "{err}");
        let tagged = format!("{ok}key_prefix = \"h{{x}}:\"\n");
        let err = Config::from_toml(&tagged).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("engine.key_prefix"), "{err}");
    }

    #[test]
    fn outbound_byte_budgets_are_checked() {
        let ok = "[limits]\noutbound_queue_bytes = 1048576\nnode_outbound_bytes = 0\n";
        assert!(Config::from_toml(ok).unwrap().validate().is_ok());
        for (text, field) in [
            (
                "[limits]\noutbound_queue_bytes = 1000\n",
                "limits.outbound_queue_bytes",
            ),
            (
                "[limits]\noutbound_queue_bytes = 1048576\nnode_outbound_bytes = 65536\n",
                "limits.node_outbound_bytes",
            ),
        ] {
            let err = Config::from_toml(text).unwrap().validate().unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
    }
}
