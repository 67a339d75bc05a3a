//! Recently used aggregates, as the last command on them left them.
//!
//! Loading an aggregate is two queries and a replay of up to `SNAPSHOT_EVERY` events (the
//! costliest part of a chat message before this cache). A command takes the copy out, so two
//! commands never share one; the command bus (`bus.rs`) says when a copy may be trusted: only
//! for an append, which optimistic concurrency checks against the stream.
//!
//! Eviction keeps two generations: a lookup moves an entry to the young one, and when the young
//! one is full it becomes the old one (whose entries are then dropped). That is an approximate
//! LRU in O(1), bounded by twice `capacity`.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Mutex;

/// An aggregate's state after its last committed event.
pub struct Cached<A> {
    pub aggregate: A,
    /// The sequence number of its last event.
    pub sequence: usize,
    /// The version of its latest snapshot (cqrs-es checks it when it writes the next one).
    pub snapshot: Option<usize>,
    /// Another writer appended to it lately (an append on this copy conflicted): the next
    /// command keeps the state from before its decision, to catch up from it if it conflicts.
    pub contended: bool,
}

type Key = (&'static str, String);
type Entry = Box<dyn Any + Send>;

pub struct AggregateCache {
    capacity: usize,
    generations: Mutex<[HashMap<Key, Entry>; 2]>,
}

impl AggregateCache {
    pub fn new(capacity: usize) -> AggregateCache {
        AggregateCache {
            capacity,
            generations: Mutex::new([HashMap::new(), HashMap::new()]),
        }
    }

    /// Takes the copy of aggregate `id` out of the cache (a command owns it until it commits).
    pub fn take<A: Send + 'static>(&self, kind: &'static str, id: &str) -> Option<Cached<A>> {
        if self.capacity == 0 {
            return None;
        }
        let key = (kind, id.to_string());
        let mut generations = self.lock();
        let entry = generations[0]
            .remove(&key)
            .or_else(|| generations[1].remove(&key))?;
        entry.downcast::<Cached<A>>().ok().map(|boxed| *boxed)
    }

    /// Keeps the state after a commit of this instance.
    pub fn put<A: Send + 'static>(&self, kind: &'static str, id: &str, cached: Cached<A>) {
        if self.capacity == 0 {
            return;
        }
        let key = (kind, id.to_string());
        let mut generations = self.lock();
        generations[1].remove(&key);
        if generations[0].len() >= self.capacity {
            let young = std::mem::take(&mut generations[0]);
            generations[1] = young;
        }
        generations[0].insert(key, Box::new(cached));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [HashMap<Key, Entry>; 2]> {
        // A panic while holding the lock cannot leave the maps half-changed in a way that
        // matters (every entry is independently valid or absent), so a poisoned lock is used.
        self.generations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(n: usize) -> Cached<String> {
        Cached {
            contended: false,
            aggregate: format!("state {n}"),
            sequence: n,
            snapshot: None,
        }
    }

    #[test]
    fn a_copy_is_taken_once() {
        let cache = AggregateCache::new(10);
        cache.put("Pair", "a", cached(3));
        let taken = cache.take::<String>("Pair", "a").expect("cached");
        assert_eq!((taken.aggregate.as_str(), taken.sequence), ("state 3", 3));
        assert!(cache.take::<String>("Pair", "a").is_none());
        assert!(
            cache.take::<String>("User", "a").is_none(),
            "kinds are apart"
        );
    }

    #[test]
    fn a_full_generation_ages_and_the_oldest_go() {
        let cache = AggregateCache::new(2);
        cache.put("Pair", "a", cached(1));
        cache.put("Pair", "b", cached(2));
        // Young is full: a and b age; c is young.
        cache.put("Pair", "c", cached(3));
        // Looking b up makes it young again.
        let b = cache
            .take::<String>("Pair", "b")
            .expect("b aged, still there");
        cache.put("Pair", "b", b);
        // Young (c, b) is full: it ages, a is dropped.
        cache.put("Pair", "d", cached(4));
        assert!(cache.take::<String>("Pair", "a").is_none());
        for id in ["b", "c", "d"] {
            assert!(cache.take::<String>("Pair", id).is_some(), "{id}");
        }
    }

    #[test]
    fn wrongly_typed_entries_are_not_returned() {
        let cache = AggregateCache::new(4);
        cache.put("Pair", "b", cached(1));
        assert!(cache.take::<u64>("Pair", "b").is_none());
    }

    #[test]
    fn capacity_zero_turns_it_off() {
        let cache = AggregateCache::new(0);
        cache.put("Pair", "a", cached(1));
        assert!(cache.take::<String>("Pair", "a").is_none());
    }
}
