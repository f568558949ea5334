//! Pure packing of ids (user ids, DIDs) into connections of a bounded size:
//! where ids go when the wanted set changes (moving as few as possible) and
//! how to repack into the fewest connections. No actors, no IO: the families
//! apply what these return.

use std::collections::{BTreeMap, BTreeSet};

/// The follows each live connection should carry, by shard index.
pub type Assignment<T = u64> = BTreeMap<usize, BTreeSet<T>>;

/// What to change so that `current` carries `desired`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SitePlan<T = u64> {
    /// Ids to add to existing shards.
    pub add: BTreeMap<usize, BTreeSet<T>>,
    /// Ids to remove from existing shards.
    pub remove: BTreeMap<usize, BTreeSet<T>>,
    /// New shards to open, each with its ids (indexes are placeholders 0..n;
    /// the planner gives them real indexes).
    pub open: Vec<BTreeSet<T>>,
    /// Shards left empty: close them.
    pub close: BTreeSet<usize>,
}

impl<T> SitePlan<T> {
    /// Follows moved, added or removed in total (what the plan costs).
    pub fn moves(&self) -> usize {
        self.add.values().map(BTreeSet::len).sum::<usize>()
            + self.remove.values().map(BTreeSet::len).sum::<usize>()
            + self.open.iter().map(BTreeSet::len).sum::<usize>()
    }
}

/// Plans a follow-list change: removed ids leave their shard, added ids fill
/// non-full shards first (fullest first, so fewer shards stay partial), the
/// rest go to new shards of `limit`. Ids that stay never move.
pub fn solve_site<T: Ord + Clone>(current: &Assignment<T>, desired: &BTreeSet<T>, limit: usize) -> SitePlan<T> {
    let limit = limit.max(1);
    let mut plan = SitePlan { add: BTreeMap::new(), remove: BTreeMap::new(), open: Vec::new(), close: BTreeSet::new() };
    let mut sizes: BTreeMap<usize, usize> = BTreeMap::new();
    let mut carried = BTreeSet::new();
    for (&shard, ids) in current {
        let gone: BTreeSet<T> = ids.iter().filter(|id| !desired.contains(id)).cloned().collect();
        sizes.insert(shard, ids.len() - gone.len());
        if !gone.is_empty() {
            plan.remove.insert(shard, gone);
        }
        carried.extend(ids.iter().filter(|id| desired.contains(id)).cloned());
    }
    let mut new_ids = desired.iter().filter(|id| !carried.contains(id)).cloned().peekable();
    // Fullest non-full shards first.
    let mut order: Vec<(usize, usize)> = sizes.iter().map(|(&s, &n)| (s, n)).filter(|(_, n)| *n < limit).collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (shard, size) in order {
        let mut free = limit - size;
        while free > 0 {
            let Some(id) = new_ids.next() else { break };
            plan.add.entry(shard).or_default().insert(id);
            free -= 1;
        }
        *sizes.entry(shard).or_default() = limit - free;
    }
    let rest: Vec<T> = new_ids.collect();
    plan.open = rest.chunks(limit).map(|c| c.iter().cloned().collect()).collect();
    plan.close = sizes.iter().filter(|(_, n)| **n == 0).map(|(&s, _)| s).collect();
    plan
}

/// One move of a consolidation: `ids` leave `from` and join `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move<T = u64> {
    /// Source shard.
    pub from: usize,
    /// Target shard.
    pub to: usize,
    /// Ids moved.
    pub ids: BTreeSet<T>,
}

/// Repacks into the fewest shards (`ceil(total / limit)`): the fullest shards
/// stay, the others' ids fill their free room, emptied shards close.
pub fn consolidate<T: Ord + Clone>(current: &Assignment<T>, limit: usize) -> (Vec<Move<T>>, BTreeSet<usize>) {
    let limit = limit.max(1);
    let total: usize = current.values().map(BTreeSet::len).sum();
    let keep_n = total.div_ceil(limit);
    let mut by_size: Vec<(usize, &BTreeSet<T>)> = current.iter().map(|(&s, ids)| (s, ids)).collect();
    by_size.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    let (keep, drain) = by_size.split_at(keep_n.min(by_size.len()));
    let mut room: Vec<(usize, usize)> = keep.iter().map(|(s, ids)| (*s, limit.saturating_sub(ids.len()))).collect();
    let mut moves = Vec::new();
    let mut close = BTreeSet::new();
    for (from, ids) in drain {
        let mut ids = ids.iter().cloned();
        let mut left = true;
        for (to, free) in room.iter_mut() {
            if *free == 0 {
                continue;
            }
            let chunk: BTreeSet<T> = ids.by_ref().take(*free).collect();
            if chunk.is_empty() {
                left = false;
                break;
            }
            *free -= chunk.len();
            moves.push(Move { from: *from, to: *to, ids: chunk });
        }
        if left && ids.next().is_some() {
            // Cannot happen when keep_n = ceil(total / limit); keep the shard rather than lose ids.
            continue;
        }
        close.insert(*from);
    }
    (moves, close)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(r: std::ops::RangeInclusive<u64>) -> BTreeSet<u64> {
        r.collect()
    }

    fn apply(current: &Assignment, plan: &SitePlan, first_new: usize) -> Assignment {
        let mut out = current.clone();
        for (s, gone) in &plan.remove {
            out.get_mut(s).unwrap().retain(|id| !gone.contains(id));
        }
        for (s, add) in &plan.add {
            out.get_mut(s).unwrap().extend(add);
        }
        for (i, open) in plan.open.iter().enumerate() {
            out.insert(first_new + i, open.clone());
        }
        for s in &plan.close {
            assert!(out.remove(s).unwrap().is_empty());
        }
        out
    }

    fn carried_once(a: &Assignment, desired: &BTreeSet<u64>) {
        let mut all = Vec::new();
        for ids in a.values() {
            all.extend(ids.iter().copied());
        }
        let n = all.len();
        let set: BTreeSet<u64> = all.into_iter().collect();
        assert_eq!(set.len(), n, "an id is carried twice");
        assert_eq!(&set, desired);
    }

    #[test]
    fn ten_thousand_follows_make_one_hundred_full_shards() {
        let desired = ids(1..=10_000);
        let plan = solve_site(&Assignment::new(), &desired, 100);
        assert_eq!(plan.open.len(), 100);
        assert!(plan.open.iter().all(|s| s.len() == 100));
        carried_once(&apply(&Assignment::new(), &plan, 0), &desired);
    }

    #[test]
    fn added_follows_fill_non_full_shards_first() {
        let mut current = Assignment::new();
        current.insert(0, ids(1..=60));
        current.insert(1, ids(101..=160));
        current.insert(2, ids(201..=290));
        let mut desired: BTreeSet<u64> = current.values().flatten().copied().collect();
        desired.extend(1000..1250);
        let plan = solve_site(&current, &desired, 100);
        // 40 + 40 + 10 = 90 free: those fill first, the other 160 open 2 shards.
        assert_eq!(plan.add.values().map(BTreeSet::len).sum::<usize>(), 90);
        assert_eq!(plan.open.iter().map(BTreeSet::len).collect::<Vec<_>>(), vec![100, 60]);
        assert!(plan.remove.is_empty());
        assert_eq!(plan.moves(), 250, "only the new ids move");
        carried_once(&apply(&current, &plan, 3), &desired);
    }

    #[test]
    fn removed_follows_leave_and_empty_shards_close() {
        let mut current = Assignment::new();
        current.insert(0, ids(1..=100));
        current.insert(1, ids(101..=150));
        let desired: BTreeSet<u64> = (1..=100).filter(|i| i % 2 == 0).collect();
        let plan = solve_site(&current, &desired, 100);
        assert_eq!(plan.close, BTreeSet::from([1]));
        assert_eq!(plan.remove[&0].len(), 50);
        carried_once(&apply(&current, &plan, 2), &desired);
    }

    #[test]
    fn consolidation_leaves_the_fewest_shards() {
        let mut current = Assignment::new();
        for s in 0..10u64 {
            current.insert(s as usize, (s * 100 + 1..=s * 100 + 37).collect());
        }
        let desired: BTreeSet<u64> = current.values().flatten().copied().collect();
        let (moves, close) = consolidate(&current, 100);
        let mut after = current.clone();
        for m in &moves {
            after.get_mut(&m.from).unwrap().retain(|id| !m.ids.contains(id));
            after.get_mut(&m.to).unwrap().extend(&m.ids);
        }
        for s in &close {
            assert!(after.remove(s).unwrap().is_empty());
        }
        assert_eq!(after.len(), 4, "370 follows at 100 per connection");
        assert!(after.values().all(|s| s.len() <= 100));
        carried_once(&after, &desired);
    }

    #[test]
    fn consolidating_a_packed_plan_moves_nothing() {
        let mut current = Assignment::new();
        current.insert(0, ids(1..=100));
        current.insert(1, ids(101..=130));
        assert_eq!(consolidate(&current, 100), (vec![], BTreeSet::new()));
    }
}
