//! Cluster membership: the configuration (voters, learners, removed ids) carried by log
//! entries, the single-server changes that may be made to it (thesis §4.1), and the
//! configurations a node's log holds.
//!
//! A configuration is in effect on a node as soon as its entry is in the node's log,
//! committed or not (§4.1); a node whose log is cut back returns to the configuration before
//! the cut. One change at a time: a leader refuses a second while the first is uncommitted,
//! so any two consecutive configurations share a majority and no two leaders can be elected
//! in one term. Each entry carries the whole configuration, not a delta, so the newest entry
//! (or a snapshot) alone says who the members are.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{NodeId, quorum};

/// How far behind the leader's last index a learner may be and still be promoted to voter:
/// a voter that must first catch up on more would hold commits back meanwhile.
pub const PROMOTE_MAX_LAG: u64 = 1_000;

/// A cluster configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    /// Voters, by id, with the address peers reach them at.
    pub voters: BTreeMap<NodeId, String>,
    /// Learners (non-voting members): they receive the log, their answers count toward
    /// nothing.
    pub learners: BTreeMap<NodeId, String>,
    /// Learners added as voters: any leader promotes one once it has caught up.
    pub promoting: BTreeSet<NodeId>,
    /// Ids once members and since removed: never admitted or added again.
    pub removed: BTreeSet<NodeId>,
}

/// A member's role in a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    /// Votes and counts toward commit.
    Voter,
    /// Receives the log only.
    Learner,
}

impl std::fmt::Display for MemberRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MemberRole::Voter => "voter",
            MemberRole::Learner => "learner",
        })
    }
}

/// One single-server change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Adds a learner; with `promote`, it becomes a voter once it has caught up.
    Add {
        /// Its id: never used in this cluster before.
        id: NodeId,
        /// Where peers reach it.
        addr: String,
        /// Whether it is to become a voter.
        promote: bool,
    },
    /// Makes a learner a voter.
    Promote {
        /// The learner.
        id: NodeId,
    },
    /// Removes a voter or a learner.
    Remove {
        /// The member.
        id: NodeId,
    },
}

/// Why a change cannot be made to a configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// The id is a member already (with another address, or the same one).
    #[error("node {id} is already a member ({role} at {addr})")]
    AlreadyMember {
        /// The id.
        id: NodeId,
        /// Its role.
        role: MemberRole,
        /// Its address.
        addr: String,
    },
    /// The address belongs to another member.
    #[error("address {addr} is already member {id}'s")]
    AddressTaken {
        /// The address.
        addr: String,
        /// The member holding it.
        id: NodeId,
    },
    /// The id was removed from this cluster; ids are never reused.
    #[error("node id {0} was removed from this cluster and cannot be used again; pick a new id")]
    Reused(NodeId),
    /// The id is not a member.
    #[error("node {0} is not a member")]
    Unknown(NodeId),
    /// The id is a voter already.
    #[error("node {0} is a voter already")]
    AlreadyVoter(NodeId),
    /// Removing the last voter would leave nobody to elect a leader.
    #[error("node {0} is the last voter; a cluster needs at least one")]
    LastVoter(NodeId),
    /// Id 0 or an empty address.
    #[error("{0}")]
    Invalid(String),
}

impl Members {
    /// A configuration of voters only.
    pub fn of_voters(voters: impl IntoIterator<Item = (NodeId, String)>) -> Self {
        Members { voters: voters.into_iter().collect(), ..Members::default() }
    }

    /// Whether `id` votes.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains_key(&id)
    }

    /// `id`'s role, if it is a member.
    pub fn role(&self, id: NodeId) -> Option<MemberRole> {
        if self.voters.contains_key(&id) {
            Some(MemberRole::Voter)
        } else if self.learners.contains_key(&id) {
            Some(MemberRole::Learner)
        } else {
            None
        }
    }

    /// `id`'s address, if it is a member.
    pub fn addr(&self, id: NodeId) -> Option<&str> {
        self.voters.get(&id).or_else(|| self.learners.get(&id)).map(String::as_str)
    }

    /// Every member (voters, then learners), with its address and role.
    pub fn all(&self) -> impl Iterator<Item = (NodeId, &str, MemberRole)> + '_ {
        let voters = self.voters.iter().map(|(&id, a)| (id, a.as_str(), MemberRole::Voter));
        voters.chain(self.learners.iter().map(|(&id, a)| (id, a.as_str(), MemberRole::Learner)))
    }

    /// The member at `addr`, if any.
    pub fn at_addr(&self, addr: &str) -> Option<NodeId> {
        self.all().find(|(_, a, _)| *a == addr).map(|(id, _, _)| id)
    }

    /// Votes (or acknowledgements) that make a majority of the voters.
    pub fn quorum(&self) -> usize {
        quorum(self.voters.len())
    }

    /// The configuration after `change`, or why it cannot be made.
    pub fn changed(&self, change: &MemberChange) -> Result<Members, ChangeError> {
        let mut next = self.clone();
        match change {
            MemberChange::Add { id, addr, promote } => {
                if *id == 0 {
                    return Err(ChangeError::Invalid("node id 0 is not valid; ids start at 1".into()));
                }
                if addr.trim().is_empty() {
                    return Err(ChangeError::Invalid(format!("node {id} needs an address")));
                }
                if let Some(role) = self.role(*id) {
                    let addr = self.addr(*id).unwrap_or_default().to_string();
                    return Err(ChangeError::AlreadyMember { id: *id, role, addr });
                }
                if self.removed.contains(id) {
                    return Err(ChangeError::Reused(*id));
                }
                if let Some(holder) = self.at_addr(addr) {
                    return Err(ChangeError::AddressTaken { addr: addr.clone(), id: holder });
                }
                next.learners.insert(*id, addr.clone());
                if *promote {
                    next.promoting.insert(*id);
                }
            }
            MemberChange::Promote { id } => {
                if self.voters.contains_key(id) {
                    return Err(ChangeError::AlreadyVoter(*id));
                }
                let addr = next.learners.remove(id).ok_or(ChangeError::Unknown(*id))?;
                next.promoting.remove(id);
                next.voters.insert(*id, addr);
            }
            MemberChange::Remove { id } => {
                if self.voters.contains_key(id) && self.voters.len() == 1 {
                    return Err(ChangeError::LastVoter(*id));
                }
                if next.voters.remove(id).is_none() && next.learners.remove(id).is_none() {
                    return Err(ChangeError::Unknown(*id));
                }
                next.promoting.remove(id);
                next.removed.insert(*id);
            }
        }
        Ok(next)
    }
}

/// The configurations in a node's log, by the index of their entry: the newest committed one
/// and every one after it. The newest is in effect.
#[derive(Clone, Debug, Default)]
pub struct MemberLog {
    /// Below every entry: the newest committed configuration and its index; at start, the
    /// one a node begins with when its log holds none (a log written before configurations
    /// were logged, or an empty one), or, later, a snapshot's.
    base: Arc<Members>,
    base_index: u64,
    /// The configurations after the base, by index.
    entries: BTreeMap<u64, Arc<Members>>,
}

impl MemberLog {
    /// A log of configurations over `base`, holding `entries` (index, configuration).
    pub fn new(base: Members, entries: impl IntoIterator<Item = (u64, Members)>) -> Self {
        let entries = entries.into_iter().map(|(i, m)| (i, Arc::new(m))).collect();
        MemberLog { base: Arc::new(base), base_index: 0, entries }
    }

    /// The configuration in effect: the newest in the log.
    pub fn latest(&self) -> &Arc<Members> {
        self.entries.values().next_back().unwrap_or(&self.base)
    }

    /// The newest committed configuration (as far as this node knows).
    pub fn committed(&self) -> &Arc<Members> {
        &self.base
    }

    /// The index of the newest configuration's entry.
    pub fn latest_index(&self) -> u64 {
        self.entries.keys().next_back().copied().unwrap_or(self.base_index)
    }

    /// The newest configuration at or below `index`.
    pub fn at(&self, index: u64) -> &Arc<Members> {
        self.entries.range(..=index).next_back().map(|(_, m)| m).unwrap_or(&self.base)
    }

    /// Every id any held configuration names as a member: the peers a leader replicates to
    /// while a removal is not yet committed, so the removed node hears of it.
    pub fn all_members(&self) -> BTreeSet<NodeId> {
        let mut ids: BTreeSet<NodeId> = self.base.all().map(|(id, _, _)| id).collect();
        for m in self.entries.values() {
            ids.extend(m.all().map(|(id, _, _)| id));
        }
        ids
    }

    /// The address of `id` in the newest configuration that names it.
    pub fn addr_of(&self, id: NodeId) -> Option<&str> {
        self.entries.values().rev().chain(std::iter::once(&self.base)).find_map(|m| m.addr(id))
    }

    /// A configuration's entry at `index` is in the log now. One at or below the committed
    /// base is known already (a leader re-sent it) and changes nothing.
    pub fn insert(&mut self, index: u64, members: Arc<Members>) {
        if index > self.base_index {
            self.entries.insert(index, members);
        }
    }

    /// The log's entries from `from` on are gone: drops every configuration held for them.
    pub fn truncate_from(&mut self, from: u64) {
        self.entries.split_off(&from);
    }

    /// The log's entries `from..=to` were replaced: drops the configurations held for them
    /// (the caller inserts the new ones).
    pub fn remove_range(&mut self, from: u64, to: u64) {
        if from <= to {
            let mut tail = self.entries.split_off(&from);
            let mut after = tail.split_off(&(to + 1));
            self.entries.append(&mut after);
        }
    }

    /// Everything up to `commit` is committed: only the newest configuration at or below it
    /// is needed from there on. Answers whether one became committed.
    pub fn commit_to(&mut self, commit: u64) -> bool {
        let Some(newest) = self.entries.range(..=commit).next_back().map(|(&i, _)| i) else { return false };
        let rest = self.entries.split_off(&(newest + 1));
        let mut committed = std::mem::replace(&mut self.entries, rest);
        if let Some(m) = committed.remove(&newest) {
            self.base = m;
            self.base_index = newest;
        }
        true
    }

    /// A snapshot whose configuration at its last entry `index` is `members` was installed:
    /// every configuration up to `index` is replaced by it, and every later one too unless
    /// the log `kept` its entries after `index`. One at or below the committed base is
    /// known already and changes nothing.
    pub fn install(&mut self, index: u64, members: Arc<Members>, kept: bool) {
        if index <= self.base_index {
            return;
        }
        self.entries = if kept { self.entries.split_off(&(index + 1)) } else { BTreeMap::new() };
        self.base = members;
        self.base_index = index;
    }

    /// Whether a configuration after `commit` is in the log: a change is under way.
    pub fn pending(&self, commit: u64) -> bool {
        self.latest_index() > commit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Members {
        Members::of_voters((1..=3).map(|id| (id, format!("127.0.0.1:{}", 7000 + id))))
    }

    #[test]
    fn add_promote_remove() {
        let m = three();
        let added = m.changed(&MemberChange::Add { id: 4, addr: "127.0.0.1:7004".into(), promote: true }).unwrap();
        assert_eq!(added.role(4), Some(MemberRole::Learner));
        assert!(added.promoting.contains(&4));
        assert_eq!(added.quorum(), 2, "a learner does not count");
        let promoted = added.changed(&MemberChange::Promote { id: 4 }).unwrap();
        assert_eq!(promoted.role(4), Some(MemberRole::Voter));
        assert!(promoted.promoting.is_empty());
        assert_eq!(promoted.quorum(), 3);
        let removed = promoted.changed(&MemberChange::Remove { id: 1 }).unwrap();
        assert_eq!(removed.role(1), None);
        assert!(removed.removed.contains(&1));
    }

    #[test]
    fn bad_changes_are_refused_with_the_reason() {
        let m = three().changed(&MemberChange::Remove { id: 3 }).unwrap();
        let add = |id, addr: &str| MemberChange::Add { id, addr: addr.into(), promote: false };
        assert_eq!(m.changed(&add(3, "127.0.0.1:7009")), Err(ChangeError::Reused(3)));
        assert!(matches!(m.changed(&add(2, "127.0.0.1:7009")), Err(ChangeError::AlreadyMember { id: 2, .. })));
        assert_eq!(
            m.changed(&add(5, "127.0.0.1:7001")),
            Err(ChangeError::AddressTaken { addr: "127.0.0.1:7001".into(), id: 1 })
        );
        assert!(matches!(m.changed(&add(0, "127.0.0.1:7009")), Err(ChangeError::Invalid(_))));
        assert_eq!(m.changed(&MemberChange::Remove { id: 9 }), Err(ChangeError::Unknown(9)));
        assert_eq!(m.changed(&MemberChange::Promote { id: 1 }), Err(ChangeError::AlreadyVoter(1)));
        let one = Members::of_voters([(1, "a".to_string())]);
        assert_eq!(one.changed(&MemberChange::Remove { id: 1 }), Err(ChangeError::LastVoter(1)));
    }

    #[test]
    fn the_log_of_configurations_follows_truncation_and_commit() {
        let base = three();
        let four = base.changed(&MemberChange::Add { id: 4, addr: "x".into(), promote: false }).unwrap();
        let mut log = MemberLog::new(Members::default(), [(1, base.clone())]);
        log.insert(5, Arc::new(four.clone()));
        assert_eq!(**log.latest(), four);
        assert!(log.pending(4));
        assert_eq!(log.all_members(), BTreeSet::from([1, 2, 3, 4]));
        // A new leader cut the log at 5: back to the configuration before.
        log.truncate_from(5);
        assert_eq!(**log.latest(), base);
        log.insert(6, Arc::new(four.clone()));
        assert!(log.commit_to(6));
        assert!(!log.pending(6));
        assert_eq!(**log.latest(), four);
        assert_eq!(**log.at(3), four, "committed configurations below fold into the base");
        // A leader re-sending the old entry at 1 does not bring its configuration back.
        log.insert(1, Arc::new(base.clone()));
        assert_eq!(**log.latest(), four);
        log.insert(8, Arc::new(base.clone()));
        log.insert(9, Arc::new(four.clone()));
        log.remove_range(8, 8);
        assert_eq!(log.latest_index(), 9);
        log.remove_range(7, 9);
        assert_eq!(log.latest_index(), 6);
        // A snapshot at 10 replaces what the log held up to it; a later one stays if the
        // log kept its entries after the snapshot.
        log.insert(12, Arc::new(base.clone()));
        log.install(10, Arc::new(four.clone()), true);
        assert_eq!((&**log.at(10), log.latest_index(), &**log.latest()), (&four, 12, &base));
        log.install(11, Arc::new(four.clone()), false);
        assert_eq!((&**log.latest(), log.latest_index()), (&four, 11));
        log.install(5, Arc::new(base.clone()), false);
        assert_eq!(**log.latest(), four, "an older snapshot changes nothing");
    }
}
