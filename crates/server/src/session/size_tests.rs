//! The session's future is allocated with its task and lives as long as its connection: its
//! size is memory per idle connection (BENCHMARKS.md). These bounds fail a change that grows it
//! by accident. They hold for the unoptimized test build (measured: the whole task's future
//! 2,328 B, the loop 816 B, against 5,024 B and 1,752 B before the loop was slimmed); a
//! release build's futures are smaller still.

use super::*;

/// The size of what `f` returns, without calling it (no socket or server is needed).
fn returned_size<A, B, C, R>(_: impl FnOnce(A, B, C) -> R) -> usize {
    std::mem::size_of::<R>()
}

#[test]
fn the_session_task_future_stays_under_its_bound() {
    let size = returned_size(serve);
    assert!(size <= 2_400, "the session future grew to {size} B");
}

#[test]
fn the_connection_loop_future_stays_under_its_bound() {
    let size = returned_size(Session::run);
    assert!(size <= 900, "the session loop's future grew to {size} B");
}
