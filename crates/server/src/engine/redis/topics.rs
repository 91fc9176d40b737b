//! How the node asks its bus task (`bus.rs`) to listen to topics: commands on a queue the bus
//! applies in order, and barriers that tell a subscribe when its topic is listened to.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::keys::Keys;
use crate::engine::hub::ChannelKey;
use crate::ids::AppId;

/// Requests to the bus task, applied in the order they were sent.
pub enum BusCommand {
    /// Listen (true) or stop listening (false) to a channel topic.
    Channel(String, bool),
    /// Listen (true) or stop listening (false) to every channel of an app, for wildcard
    /// subscriptions.
    App(String, bool),
    /// Answered once every command sent before it has been applied (`false` if the bus is down).
    Barrier(oneshot::Sender<bool>),
}

/// How the rest of the node asks the bus task for topics. Not bounded by a number, but by who
/// sends: a session has one engine operation in flight at a time, and each sends at most two
/// commands (the topic and a barrier), as does each reconnect-grace timer; so the queue holds
/// at most about two commands per connection and running timer.
#[derive(Clone)]
pub struct BusSender {
    commands: mpsc::UnboundedSender<BusCommand>,
    keys: Arc<Keys>,
}

impl BusSender {
    pub fn new(keys: Arc<Keys>) -> (BusSender, mpsc::UnboundedReceiver<BusCommand>) {
        let (commands, rx) = mpsc::unbounded_channel();
        (BusSender { commands, keys }, rx)
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Listen (or stop listening) to a channel's topic.
    pub fn listen_channel(&self, (app, channel): &ChannelKey, on: bool) {
        let topic = self.keys.channel(app.as_str(), channel.as_str());
        // A closed queue means the engine is stopping; nothing is left to listen for.
        let _ = self.commands.send(BusCommand::Channel(topic, on));
    }

    /// Listen (or stop listening) to every channel of an app, for its wildcard subscribers.
    pub fn listen_app(&self, app: &AppId, on: bool) {
        let _ = self
            .commands
            .send(BusCommand::App(app.as_str().to_string(), on));
    }

    /// Answered once every command sent before it has been applied.
    pub fn barrier(&self) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(BusCommand::Barrier(tx));
        rx
    }
}
