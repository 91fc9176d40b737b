//! Publishing on the Redis engine: one script on the channel's slot publishes the message to
//! the channel's topic (and, in cluster mode, to the app's wildcard topic when some node has
//! wildcard subscribers there) and counts the subscribed connections it reaches. Every node,
//! the publisher's own included, delivers it from the bus (`local/events.rs`), which keeps
//! FIFO per sender → receiver. A channel that keeps history publishes through `PUBLISH_KEPT`
//! instead, which also appends the message to the channel's stream (`history.rs`).

use super::history::new_epoch;
use super::node::{unavailable, Node};
use super::wire::{self, kind, Event};
use crate::engine::{EngineError, Publication};

impl Node {
    /// The webhook spec of a publish: `message.published` carries the sender, its metadata
    /// and the data as published (the script adds the offset where history is kept).
    async fn message_webhook_spec(
        &self,
        p: &Publication<'_>,
        base: &str,
    ) -> super::webhook_spec::Spec {
        let app = p.app.as_str();
        let channel = p.channel.as_str();
        let Some(w) = self.webhooks.get() else {
            return super::webhook_spec::Spec::default();
        };
        if !w.hooks.wants(
            app,
            crate::webhooks::EventType::MessagePublished,
            Some(channel),
        ) {
            return super::webhook_spec::Spec::default();
        }
        let mut extra = format!(
            "\"from\":{}",
            serde_json::to_string(p.from.as_str()).unwrap_or_default()
        );
        if let Some(meta) = p.from_metadata {
            extra.push_str(",\"fromMetadata\":");
            extra.push_str(meta.get());
        }
        extra.push_str(",\"data\":");
        extra.push_str(p.data.get());
        self.webhook_spec(
            app,
            Some(channel),
            super::webhook_spec::MESSAGE,
            &extra,
            base,
        )
        .await
    }

    pub(super) async fn publish(&self, p: Publication<'_>) -> Result<usize, EngineError> {
        let mut event = Event::new(kind::MESSAGE);
        event.from = Some(p.from.as_str().into());
        event.meta = p.from_metadata;
        event.data = Some(p.data);
        let exclusion = wire::exclusion(&self.id, p.exclude);
        event.exclude = exclusion.as_deref().map(Into::into);
        // Cluster mode: wildcard subscribers of the app listen on its classic topic.
        let app_topic = self
            .app_has_pattern_interest(p.app)
            .then(|| self.keys.app_topic(p.app.as_str()));
        if app_topic.is_some() {
            event.channel = Some(p.channel.as_str().into());
        }
        let payload = event.to_json();
        let base = self.keys.channel_base(p.app.as_str(), p.channel.as_str());
        let publisher_subscribed = p
            .exclude
            .is_some_and(|c| self.local.is_subscribed(c, p.channel));
        let app_topic = app_topic.unwrap_or_default();
        let spec = self.message_webhook_spec(&p, &base).await;
        let mut invocation = match self.history_policy(p.channel.as_str()) {
            // The channel keeps history: the script also takes the offset and appends.
            Some(policy) => {
                let mut i = self.scripts.publish_kept.key(&base);
                i.arg(self.publish_command())
                    .arg(self.keys.topic_of_base(&base))
                    .arg(&payload)
                    .arg(usize::from(publisher_subscribed))
                    .arg(&app_topic)
                    .arg(policy.max_messages)
                    .arg(policy.max_age.as_millis() as u64)
                    .arg(new_epoch());
                spec.apply(&mut i);
                Some(i)
            }
            None => None,
        };
        let result: redis::RedisResult<usize> = match invocation.as_mut() {
            Some(kept) => kept
                .invoke_async::<(usize, u64, String, String)>(&mut self.conn())
                .await
                .map(|(receivers, ..)| receivers),
            None => {
                let mut i = self.scripts.publish.key(&base);
                i.arg(self.publish_command())
                    .arg(self.keys.topic_of_base(&base))
                    .arg(&payload)
                    .arg(usize::from(publisher_subscribed))
                    .arg(&app_topic);
                spec.apply(&mut i);
                i.invoke_async(&mut self.conn()).await
            }
        };
        match result {
            Ok(n) => Ok(n),
            Err(err) => {
                // Local subscribers still get it; the caller learns remote delivery failed.
                self.local
                    .deliver_message(p.app, p.channel, &event, p.exclude.map(|c| c.id));
                self.mark_trouble();
                Err(unavailable(err))
            }
        }
    }
}
