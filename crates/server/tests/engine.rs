//! Engine-level behaviour, the same scenarios against the memory engine and the Redis engine,
//! driven only through the public `Engine` trait: no websockets, no sessions. Connections are
//! `Conn` values whose outbound queues the test reads directly.
//!
//! Each scenario is written once (`engine/*.rs`, generic over a [`harness::Nodes`]) and
//! instantiated per engine below. Redis scenarios start their own redis-server on a free port.
#![allow(clippy::unwrap_used)]

#[path = "engine/coalescing.rs"]
mod coalescing;
#[path = "engine/cross_node.rs"]
mod cross_node;
#[path = "engine/departures.rs"]
mod departures;
#[path = "engine/harness.rs"]
mod harness;
#[path = "engine/history.rs"]
mod history;
#[path = "engine/large_rooms.rs"]
mod large_rooms;
#[path = "engine/messages.rs"]
mod messages;
#[path = "engine/occupancy.rs"]
mod occupancy;
#[path = "engine/presence.rs"]
mod presence;
#[path = "engine/redis_history.rs"]
mod redis_history;
#[path = "engine/resume.rs"]
mod resume;
#[path = "engine/resume_engines.rs"]
mod resume_engines;
#[path = "engine/views.rs"]
mod views;

use harness::Nodes;

/// One test per scenario and engine: `memory::<scenario>` and `redis::<scenario>`.
macro_rules! on_both_engines {
    ($($module:ident :: $scenario:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $scenario() {
                    crate::$module::$scenario(crate::Nodes::memory()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $scenario() {
                    crate::$module::$scenario(crate::Nodes::redis(1).await).await;
                }
            )*
        }
    };
}

on_both_engines!(
    presence::subscribe_queues_ack_then_full_snapshot,
    presence::joined_goes_to_others_never_to_self,
    presence::presence_is_reference_counted,
    presence::repeat_subscribe_resends_snapshot_and_updates_the_flag,
    presence::unsubscribe_emits_left_and_is_idempotent,
    departures::disconnect_left_announces_at_once,
    departures::dropped_holds_presence_for_the_grace,
    departures::reconnect_within_the_grace_announces_nothing_on_one_node,
    departures::reconnect_with_new_metadata_announces_nothing,
    messages::publish_reaches_every_subscriber_but_the_publisher,
    messages::publish_counts_its_receivers,
    messages::directs_reach_every_connection_of_the_peer,
    messages::wildcards_get_messages_but_never_presence,
    messages::exact_and_wildcard_subscriptions_deliver_once,
    messages::the_app_pattern_cap_refuses_new_patterns,
    views::channel_members_lists_each_peer_once,
    views::close_peer_closes_every_connection_of_the_peer,
    views::local_views_show_channels_and_connections,
    views::stats_count_and_return_to_zero,
    views::apps_are_isolated,
    occupancy::occupancy_counts_peers_and_connections,
);

/// What the engines document differently (a node's shutdown), and what only a cluster of
/// nodes can show.
mod memory_only {
    use crate::Nodes;
    use crate::{departures, history, large_rooms, resume};

    /// Real threads, so publishes and resuming subscribes do interleave.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resume_meets_live_messages_with_no_gap_and_no_duplicate() {
        resume::a_resume_meets_live_messages_with_no_gap_and_no_duplicate(resume::nodes()).await;
    }

    #[tokio::test]
    async fn resume_directs_wait_for_a_parked_peer() {
        resume::directs_wait_for_a_parked_peer(resume::nodes()).await;
    }

    #[tokio::test]
    async fn over_the_cap_watchers_get_counts_not_deltas() {
        let nodes = Nodes::memory_with(&large_rooms::stadium_caps());
        large_rooms::over_the_cap_watchers_get_counts_not_deltas(nodes).await;
    }

    #[tokio::test]
    async fn shrinking_back_repairs_every_roster() {
        let nodes = Nodes::memory_with(&large_rooms::stadium_caps());
        large_rooms::shrinking_back_repairs_every_roster(nodes).await;
    }

    #[tokio::test(start_paused = true)]
    async fn counts_at_most_once_a_second() {
        let nodes = Nodes::memory_with(&large_rooms::stadium_caps());
        large_rooms::counts_at_most_once_a_second(nodes).await;
    }

    #[tokio::test]
    async fn history_rewind_sends_the_last_messages_then_live() {
        let nodes = Nodes::memory_with_history(&history::rooms(20, 1000));
        history::rewind_sends_the_last_messages_then_live(nodes).await;
    }

    #[tokio::test]
    async fn history_wildcards_get_no_rewind_and_other_channels_keep_nothing() {
        let nodes = Nodes::memory_with_history(&history::rooms(20, 1000));
        history::wildcards_get_no_rewind_and_other_channels_keep_nothing(nodes).await;
    }

    #[tokio::test]
    async fn history_rewind_counts_against_the_outbound_queue() {
        let nodes = Nodes::memory_with_history(&history::rooms(20, 1000));
        history::rewind_counts_against_the_outbound_queue(nodes).await;
    }

    /// Real threads, so publishes and subscribes do interleave.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn history_no_gap_and_no_duplicate_at_the_seam() {
        let nodes = Nodes::memory_with_history(&history::rooms(20, 1000));
        history::no_gap_and_no_duplicate_at_the_seam(nodes).await;
    }

    /// The node's presence dies with it: no grace, no announcement.
    #[tokio::test]
    async fn shutdown_announces_nothing() {
        departures::memory_shutdown_announces_nothing(Nodes::memory()).await;
    }
}

/// History on the Redis engine: the memory engine's scenarios, then what only several nodes
/// sharing one Redis can show.
mod redis_history_scenarios {
    use crate::Nodes;
    use crate::{history, redis_history};

    async fn nodes(count: usize) -> Nodes {
        Nodes::redis_with_history(count, &history::rooms(20, 1000)).await
    }

    #[tokio::test]
    async fn rewind_sends_the_last_messages_then_live() {
        history::rewind_sends_the_last_messages_then_live(nodes(1).await).await;
    }

    #[tokio::test]
    async fn wildcards_get_no_rewind_and_other_channels_keep_nothing() {
        history::wildcards_get_no_rewind_and_other_channels_keep_nothing(nodes(1).await).await;
    }

    #[tokio::test]
    async fn rewind_counts_against_the_outbound_queue() {
        history::rewind_counts_against_the_outbound_queue(nodes(1).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_gap_and_no_duplicate_at_the_seam() {
        history::no_gap_and_no_duplicate_at_the_seam(nodes(1).await).await;
    }

    async fn three(count: usize) -> Nodes {
        Nodes::redis_with_history(count, &redis_history::rooms(20, 1000, 3600)).await
    }

    async fn three_on_a_cluster(count: usize) -> Nodes {
        let rooms = redis_history::rooms(20, 1000, 3600);
        Nodes::redis_cluster_with_history(count, &rooms).await
    }

    #[tokio::test]
    async fn publish_on_one_node_rewind_and_read_on_another() {
        redis_history::publish_on_one_node_rewind_and_read_on_another(three(3).await).await;
    }

    #[tokio::test]
    async fn publish_on_one_node_rewind_and_read_on_another_on_a_cluster() {
        let nodes = three_on_a_cluster(3).await;
        redis_history::publish_on_one_node_rewind_and_read_on_another(nodes).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_seam_holds_with_publishers_on_other_nodes() {
        redis_history::the_seam_holds_with_publishers_on_other_nodes(three(3).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_seam_holds_with_publishers_on_other_nodes_on_a_cluster() {
        let nodes = three_on_a_cluster(3).await;
        redis_history::the_seam_holds_with_publishers_on_other_nodes(nodes).await;
    }

    #[tokio::test]
    async fn a_message_lost_on_the_bus_is_repaired_from_history() {
        redis_history::a_message_lost_on_the_bus_is_repaired_from_history(three(2).await).await;
    }

    #[tokio::test]
    async fn a_message_lost_on_the_bus_is_repaired_from_history_on_a_cluster() {
        let nodes = three_on_a_cluster(2).await;
        redis_history::a_message_lost_on_the_bus_is_repaired_from_history(nodes).await;
    }

    #[tokio::test]
    async fn trimmed_by_count_and_by_age() {
        let nodes = Nodes::redis_with_history(1, &redis_history::rooms(0, 5, 1)).await;
        redis_history::trimmed_by_count_and_by_age(nodes).await;
    }

    #[tokio::test]
    async fn data_loss_starts_a_new_epoch() {
        redis_history::data_loss_starts_a_new_epoch(three(2).await).await;
    }
}

mod redis_only {
    use crate::Nodes;
    use crate::{cross_node, departures, large_rooms};
    use herald_server::engine::Departure;

    /// Another node takes the peers over: the grace covers a shutdown too.
    #[tokio::test]
    async fn shutdown_holds_presence_for_the_grace() {
        departures::holds_presence_for_the_grace(Nodes::redis(1).await, Departure::Shutdown).await;
    }

    #[tokio::test]
    async fn reconnect_to_another_node_within_the_grace_announces_nothing() {
        departures::reconnect_within_the_grace_announces_nothing(Nodes::redis(2).await, 1).await;
    }

    #[tokio::test]
    async fn presence_crosses_nodes() {
        cross_node::presence_crosses_nodes(Nodes::redis(2).await).await;
    }

    #[tokio::test]
    async fn over_the_cap_watchers_get_counts_not_deltas() {
        let nodes = Nodes::redis_with(1, &large_rooms::stadium_caps()).await;
        large_rooms::over_the_cap_watchers_get_counts_not_deltas(nodes).await;
    }

    #[tokio::test]
    async fn shrinking_back_repairs_every_roster() {
        let nodes = Nodes::redis_with(1, &large_rooms::stadium_caps()).await;
        large_rooms::shrinking_back_repairs_every_roster(nodes).await;
    }

    #[tokio::test]
    async fn occupancy_mode_crosses_nodes() {
        let nodes = Nodes::redis_with(2, &large_rooms::stadium_caps()).await;
        large_rooms::occupancy_mode_crosses_nodes(nodes).await;
    }

    #[tokio::test]
    async fn occupancy_sums_every_node() {
        crate::occupancy::occupancy_sums_every_node(Nodes::redis(2).await).await;
    }

    #[tokio::test]
    async fn a_followed_room_is_not_read_again() {
        cross_node::a_followed_room_is_not_read_again(Nodes::redis(2).await).await;
    }

    #[tokio::test]
    async fn messages_cross_nodes() {
        cross_node::messages_cross_nodes(Nodes::redis(2).await).await;
    }

    #[tokio::test]
    async fn directs_and_kicks_cross_nodes() {
        cross_node::directs_and_kicks_cross_nodes(Nodes::redis(2).await).await;
    }
}

/// Presence coalescing, on one memory node and across two Redis nodes.
mod coalesced {
    use crate::coalescing::{a_join_storm_is_coalesced_and_exact, WINDOW};
    use crate::Nodes;

    #[tokio::test]
    async fn memory_join_storm_is_coalesced_and_exact() {
        a_join_storm_is_coalesced_and_exact(Nodes::memory_coalescing(WINDOW)).await;
    }

    #[tokio::test]
    async fn redis_join_storm_is_coalesced_and_exact() {
        a_join_storm_is_coalesced_and_exact(Nodes::redis_coalescing(2, WINDOW).await).await;
    }
}

/// Lossless reconnect on both engines (park, take, replay, the direct inbox), and what only
/// several Redis nodes can show: resuming on another node.
mod resume_on_both {
    use crate::resume_engines as scenarios;

    macro_rules! both {
        ($($scenario:ident),* $(,)?) => {
            mod memory {
                $(
                    #[tokio::test]
                    async fn $scenario() {
                        super::scenarios::$scenario(super::scenarios::memory()).await;
                    }
                )*
            }
            mod redis {
                $(
                    #[tokio::test]
                    async fn $scenario() {
                        super::scenarios::$scenario(super::scenarios::redis(1).await).await;
                    }
                )*
            }
        };
    }

    both!(
        a_parked_position_is_taken_once_and_replays_the_gap,
        a_gap_that_cannot_be_filled_replays_nothing,
        the_inbox_holds_directs_in_order_up_to_its_bound,
    );

    #[tokio::test]
    async fn redis_a_peer_resumes_on_another_node() {
        scenarios::a_peer_resumes_on_another_node(scenarios::redis(3).await).await;
    }

    #[tokio::test]
    async fn redis_only_one_node_takes_a_position() {
        scenarios::only_one_node_takes_a_position(scenarios::redis(2).await).await;
    }

    #[tokio::test]
    async fn redis_positions_outlive_a_node_that_dies_before_parking() {
        let nodes = scenarios::redis(2).await;
        scenarios::positions_outlive_a_node_that_dies_before_parking(nodes).await;
    }

    #[tokio::test]
    async fn redis_a_peer_connected_elsewhere_is_not_parked() {
        scenarios::a_peer_connected_elsewhere_is_not_parked(scenarios::redis(2).await).await;
    }
}

/// The seam under concurrent publishers, on the Redis engine (the scenario is the memory
/// engine's, resumed from "before any history").
mod resume_seam_on_redis {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resume_meets_live_messages_with_no_gap_and_no_duplicate() {
        let nodes = crate::resume_engines::redis(1).await;
        crate::resume::a_resume_meets_live_messages_with_no_gap_and_no_duplicate(nodes).await;
    }
}
