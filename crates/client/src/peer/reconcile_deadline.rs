//! The watchdog of a post-reconnect reconcile: the roster snapshot should follow the replayed
//! subscribe; when it does not, subscribe again, and in the end tell the application.

use std::sync::Arc;

use super::{PeerError, PeerInner, PeerState};
use crate::events::lock;
use crate::types::ConnectionState;

/// Re-subscribes issued when no snapshot arrives after a reconnect, before giving up.
const MAX_RECONCILE_RESUBSCRIBES: u32 = 2;

impl PeerInner {
    /// If the snapshot has not arrived `reconcile_timeout` after a reconnect, subscribe again
    /// on the same connection (twice), then report [`PeerError::ReconcileTimeout`].
    pub(super) fn arm_reconcile_deadline(self: &Arc<Self>, round: u64) {
        let peer = Arc::downgrade(self);
        let wait = self.reconcile_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let Some(peer) = peer.upgrade() else {
                return;
            };
            let connected = peer.client.state() == ConnectionState::Connected;
            let retry = {
                let mut shared = lock(&peer.shared);
                if shared.reconcile_round != round
                    || !shared.reconcile_pending
                    || shared.phase != PeerState::Reconnecting
                    || !connected
                {
                    return;
                }
                let Some(channel) = shared.channel.clone() else {
                    return;
                };
                if shared.reconcile_resubscribes < MAX_RECONCILE_RESUBSCRIBES {
                    shared.reconcile_resubscribes += 1;
                    Some((channel, shared.join_options))
                } else {
                    None
                }
            };
            match retry {
                Some((channel, options)) => {
                    tracing::warn!(%channel, "no roster snapshot after reconnect; subscribing again");
                    peer.arm_reconcile_deadline(round);
                    let _ = peer.client.subscribe(&channel, options).await;
                }
                None => peer.errors.emit(PeerError::ReconcileTimeout),
            }
        });
    }
}
