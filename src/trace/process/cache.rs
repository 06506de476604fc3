//! A bounded cache of SQL obfuscation results, as the trace-agent keeps one
//! (`pkg/obfuscate`, `apm_config.obfuscation.cache.enabled`): the same raw
//! query obfuscates to the same text, and the obfuscator costs tens of
//! thousands of instructions a query where a lookup costs a few hundred.
//!
//! In: a raw query, its DBMS and the obfuscator's answer. Out: the answer
//! again, when the same query comes back. Must never: hold more than its
//! byte budget ([`BUDGET`], entries charged their bytes and
//! [`ENTRY_OVERHEAD`]), keep a query longer than [`MAX_QUERY`], or give back
//! anything but what the obfuscator gave for that exact query and DBMS.
//!
//! Differences from the Agent's (a ristretto cache of 5,000,000 "cost"
//! units, keyed by the SQL options and the query): a fixed 1 MiB here (the
//! relay's whole peak is about 10 MiB), a doorkeeper instead of ristretto's
//! TinyLFU admission (a query is stored the second time it is seen, so
//! queries with their literals inline, each seen once, never fill it), and
//! CLOCK eviction (a second chance for entries hit since the hand last
//! passed) instead of sampled LFU. See docs/DESIGN.md, "Traces".

use hashbrown::HashTable;
use libdd_trace_obfuscation::obfuscation_config::DbmsKind;

/// Bytes the cache may hold, entries charged as [`SqlCache::cost`] says.
pub const BUDGET: usize = 1 << 20;
/// Queries longer than this are obfuscated every time, never stored.
pub const MAX_QUERY: usize = 4096;
/// What an entry costs beyond its two strings, at worst: its slot (48
/// bytes, 96 with the slot vector's doubling slack), its index entry (a
/// `u32` and a control byte, with the table's slack), and two allocation
/// headers and their rounding.
pub const ENTRY_OVERHEAD: usize = 160;
/// Slots of the doorkeeper (the hashes of queries seen once), 32 KiB.
const DOOR: usize = 4096;

struct Entry {
    hash: u64,
    dbms: DbmsKind,
    query: Box<str>,
    out: Box<str>,
    /// Hit since the clock hand last passed.
    hot: bool,
}

/// The cache. One per [`super::Processor`] (so per SQL configuration).
pub struct SqlCache {
    index: HashTable<u32>,
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    hand: usize,
    bytes: usize,
    budget: usize,
    /// Allocated at the first insert, so an app without SQL pays nothing.
    door: Vec<u64>,
}

impl SqlCache {
    /// An empty cache of `budget` bytes.
    pub fn new(budget: usize) -> Self {
        Self {
            index: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            hand: 0,
            bytes: 0,
            budget,
            door: Vec::new(),
        }
    }

    /// The key's hash: the query's bytes, seeded with its DBMS.
    pub fn hash(dbms: DbmsKind, query: &str) -> u64 {
        let seed = match dbms {
            DbmsKind::Generic => 0,
            DbmsKind::Mssql => 1,
            DbmsKind::Mysql => 2,
            DbmsKind::Postgresql => 3,
            DbmsKind::Oracle => 4,
            _ => 5,
        };
        xxhash_rust::xxh3::xxh3_64_with_seed(query.as_bytes(), seed)
    }

    /// What an entry of this query and answer is charged.
    pub fn cost(query: &str, out: &str) -> usize {
        query.len() + out.len() + ENTRY_OVERHEAD
    }

    /// Bytes charged now.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries held now.
    #[cfg(test)]
    pub fn entries(&self) -> usize {
        self.index.len()
    }

    /// The stored answer for `query` under `dbms` (`hash` from
    /// [`SqlCache::hash`]), marking it hit.
    pub fn get(&mut self, hash: u64, dbms: DbmsKind, query: &str) -> Option<&str> {
        let slots = &mut self.slots;
        let &i = self.index.find(hash, |&i| {
            slots[i as usize]
                .as_ref()
                .is_some_and(|e| e.dbms == dbms && *e.query == *query)
        })?;
        let e = slots[i as usize].as_mut()?;
        e.hot = true;
        Some(&e.out)
    }

    /// Stores `out` as the answer for `query` under `dbms`, if the query is
    /// short enough and was seen before (the doorkeeper), evicting by CLOCK
    /// until it fits.
    pub fn insert(&mut self, hash: u64, dbms: DbmsKind, query: &str, out: &str) {
        let cost = Self::cost(query, out);
        if query.len() > MAX_QUERY || cost > self.budget {
            return;
        }
        if self.door.is_empty() {
            self.door = vec![0; DOOR];
        }
        let door = &mut self.door[hash as usize % DOOR];
        if *door != hash {
            *door = hash;
            return;
        }
        if self.get(hash, dbms, query).is_some() {
            return;
        }
        while self.bytes + cost > self.budget && self.bytes > 0 {
            self.evict_one();
        }
        let entry = Entry {
            hash,
            dbms,
            query: query.into(),
            out: out.into(),
            hot: false,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(entry);
                i
            }
            None => {
                self.slots.push(Some(entry));
                (self.slots.len() - 1) as u32
            }
        };
        let slots = &self.slots;
        self.index.insert_unique(hash, i, |&j| {
            slots[j as usize].as_ref().map_or(0, |e| e.hash)
        });
        self.bytes += cost;
    }

    /// Removes one entry: the first cold one from the hand on, cooling the
    /// hot ones it passes. Only called with something held.
    fn evict_one(&mut self) {
        loop {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let i = self.hand;
            self.hand += 1;
            let Some(e) = &mut self.slots[i] else {
                continue;
            };
            if e.hot {
                e.hot = false;
                continue;
            }
            let hash = e.hash;
            if let Some(e) = self.slots[i].take() {
                self.bytes -= Self::cost(&e.query, &e.out);
            }
            if let Ok(found) = self.index.find_entry(hash, |&j| j as usize == i) {
                found.remove();
            }
            self.free.push(i as u32);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_stored_the_second_time_and_hit_the_third() {
        let mut c = SqlCache::new(BUDGET);
        let q = "SELECT * FROM t WHERE a = %s";
        let h = SqlCache::hash(DbmsKind::Postgresql, q);
        assert_eq!(c.get(h, DbmsKind::Postgresql, q), None);
        c.insert(h, DbmsKind::Postgresql, q, "SELECT * FROM t WHERE a = ?");
        assert_eq!(c.get(h, DbmsKind::Postgresql, q), None, "doorkeeper");
        c.insert(h, DbmsKind::Postgresql, q, "SELECT * FROM t WHERE a = ?");
        assert_eq!(
            c.get(h, DbmsKind::Postgresql, q),
            Some("SELECT * FROM t WHERE a = ?")
        );
        let g = SqlCache::hash(DbmsKind::Mysql, q);
        assert_eq!(c.get(g, DbmsKind::Mysql, q), None, "another DBMS");
        // Same hash, other DBMS: no confusion either.
        assert_eq!(c.get(h, DbmsKind::Mysql, q), None);
        assert_eq!(c.entries(), 1);
        assert_eq!(c.bytes(), SqlCache::cost(q, "SELECT * FROM t WHERE a = ?"));
    }

    #[test]
    fn long_queries_are_not_stored() {
        let mut c = SqlCache::new(BUDGET);
        let q = "x".repeat(MAX_QUERY + 1);
        let h = SqlCache::hash(DbmsKind::Generic, &q);
        c.insert(h, DbmsKind::Generic, &q, "x");
        c.insert(h, DbmsKind::Generic, &q, "x");
        assert_eq!((c.entries(), c.bytes()), (0, 0));
    }

    #[test]
    fn the_cache_stays_within_its_budget_and_keeps_hot_entries() {
        let budget = 64 * 1024;
        let mut c = SqlCache::new(budget);
        let hot = "SELECT hot FROM t WHERE id = ?";
        let hh = SqlCache::hash(DbmsKind::Generic, hot);
        c.insert(hh, DbmsKind::Generic, hot, "hot");
        c.insert(hh, DbmsKind::Generic, hot, "hot");
        let mut max_len = 0;
        for i in 0..20_000usize {
            let q = format!("SELECT {} FROM t{i}", "c".repeat(i % 3000));
            let h = SqlCache::hash(DbmsKind::Generic, &q);
            c.insert(h, DbmsKind::Generic, &q, &q[..q.len() / 2]);
            c.insert(h, DbmsKind::Generic, &q, &q[..q.len() / 2]);
            assert!(c.bytes() <= budget, "{} bytes", c.bytes());
            // The hot entry is hit between inserts: CLOCK keeps it.
            assert_eq!(c.get(hh, DbmsKind::Generic, hot), Some("hot"), "at {i}");
            max_len = max_len.max(c.slots.len());
        }
        assert!(c.entries() > 1);
        assert!(max_len <= budget / ENTRY_OVERHEAD, "{max_len} slots");
        assert_eq!(
            c.bytes(),
            c.slots
                .iter()
                .flatten()
                .map(|e| SqlCache::cost(&e.query, &e.out))
                .sum::<usize>()
        );
        assert_eq!(c.entries(), c.slots.iter().flatten().count());
    }
}
