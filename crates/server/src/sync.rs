//! Small helpers around std locks.
//!
//! Herald uses std (not async) mutexes on purpose: every critical section is short and never
//! spans an `.await` (clippy's `await_holding_lock` is denied workspace-wide).

use std::sync::{Mutex, MutexGuard};

/// Locks, recovering the data if a previous holder panicked: a panic in one connection's task
/// must not take every other connection down with a poisoned lock.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
