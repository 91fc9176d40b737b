//! The node's own bookkeeping of its instance index (`index.rs` writes and prunes the index in
//! Redis): which entries it knows are written, and which an operation in flight is using.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::sync::lock;

/// Which index entries this node has written, and which are in use by an operation in flight.
/// An entry is pruned only when it is neither in use nor backing local state.
#[derive(Default)]
pub struct IndexBook {
    state: Mutex<BookState>,
}

#[derive(Default)]
struct BookState {
    written: HashSet<String>,
    busy: HashMap<String, u32>,
}

/// Keeps an index entry in use for as long as it lives.
pub struct InUse<'a> {
    book: &'a IndexBook,
    base: String,
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.book.state);
        if let Some(n) = state.busy.get_mut(&self.base) {
            *n -= 1;
            if *n == 0 {
                state.busy.remove(&self.base);
            }
        }
    }
}

impl IndexBook {
    /// Marks an entry in use for the guard's lifetime; true when it is known written.
    pub fn use_entry(&self, base: &str) -> (InUse<'_>, bool) {
        let mut state = lock(&self.state);
        *state.busy.entry(base.to_string()).or_default() += 1;
        let written = state.written.contains(base);
        (
            InUse {
                book: self,
                base: base.to_string(),
            },
            written,
        )
    }

    /// Forgets which entries are known written (the instance changed, or re-assertion is
    /// about to write them all again).
    pub fn forget_writes(&self) {
        lock(&self.state).written.clear();
    }

    pub fn mark_written<'b>(&self, bases: impl IntoIterator<Item = &'b str>) {
        lock(&self.state)
            .written
            .extend(bases.into_iter().map(str::to_string));
    }

    /// Picks the entries (base → generation, as read from Redis) that back nothing: not in
    /// use and not among the `live` bases. `live` is computed under the book's lock, so an
    /// operation that finished before shows up as local state, and one that starts after finds
    /// its entry unwritten and writes it again.
    pub fn take_stale(
        &self,
        entries: HashMap<String, String>,
        live: impl FnOnce() -> HashSet<String>,
    ) -> Vec<(String, String)> {
        let mut state = lock(&self.state);
        let live = live();
        let mut stale = Vec::new();
        for (base, generation) in entries {
            if !state.busy.contains_key(&base) && !live.contains(&base) {
                state.written.remove(&base);
                stale.push((base, generation));
            }
        }
        stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_in_use_or_live_is_never_stale() {
        let book = IndexBook::default();
        book.mark_written(["a", "b", "c"]);
        let (guard, written) = book.use_entry("a");
        assert!(written);
        let entries: HashMap<String, String> = ["a", "b", "c"]
            .iter()
            .map(|b| (b.to_string(), "1".to_string()))
            .collect();
        let mut stale = book.take_stale(entries.clone(), || HashSet::from(["b".to_string()]));
        stale.sort();
        assert_eq!(stale, vec![("c".to_string(), "1".to_string())]);
        // A stale entry is no longer known written: the next user writes it again.
        assert!(!book.use_entry("c").1);
        drop(guard);
        let stale = book.take_stale(entries, || HashSet::from(["b".to_string()]));
        assert!(stale.iter().any(|(b, _)| b == "a"));
    }
}
