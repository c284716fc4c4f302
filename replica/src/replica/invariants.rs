//! What must hold between inputs (`Replica::check_invariants`).
//!
//! What the types already say is not checked here: a stopped server has a reason
//! (`RoleState::Down`), only the primary has a voter change, an assigned tid or a stop
//! (`PrimaryState`), and only a follower recovers or buffers commits (`FollowerState`).

use super::*;

impl<S: Storage> Replica<S> {
    /// Checks the replica's own invariants; panics, naming the one broken, if any is. The
    /// storage-server core runs it after every input in debug builds and always in the
    /// simulator (`servercore::CoreOptions::check_invariants`), as `gcs::Node` checks its own.
    pub fn check_invariants(&self) {
        let me = self.me;
        let fail = |what: &str| -> ! {
            panic!("replica s{me} invariant broken: {what} (role {:?}, primary {:?}, last {}, promised {})",
                self.role(), self.primary, self.last, self.durable.promised.0)
        };
        if let RoleState::Primary(ps) = &self.role {
            // Only an elected primary of a primary component acts as one...
            let Some((p, epoch)) = self.primary else {
                fail("primary role without a working primary");
            };
            if p != me {
                fail("primary role while another server is the working primary");
            }
            if !self.view.as_ref().is_some_and(|v| v.primary_component) {
                fail("primary outside a primary component");
            }
            // ...under an epoch it durably promised...
            if self.durable.promised < epoch {
                fail("primary of an epoch above its durable promise");
            }
            // ...over a consistent store...
            if self.durable.fill_since.is_some() {
                fail("primary with an object fill open");
            }
            // ...and every transaction it applied since is one it assigned.
            if self.last > ps.last_assigned {
                fail("primary applied a tid it never assigned");
            }
        }
        // Voters come from the store: never none, and a joint configuration's old set is one.
        if self.voters.voters.is_empty() || self.voters.old.as_ref().is_some_and(|o| o.is_empty()) {
            fail("an empty voter set");
        }
        // Nothing counts as durable here beyond what the store holds, and syncs are asked
        // in order, each for more than the one before.
        if self.synced > self.last {
            fail("synced beyond the last transaction");
        }
        if !self
            .syncs
            .iter()
            .zip(self.syncs.iter().skip(1))
            .all(|(a, b)| a.0 < b.0 && a.1 < b.1 && b.1 <= self.last)
            || self.syncs.front().is_some_and(|s| s.1 <= self.synced)
        {
            fail("syncs asked out of order");
        }
        // The lineage: epochs strictly increase, and so do (weakly) their starting tids.
        if !self
            .lineage
            .windows(2)
            .all(|w| w[0].epoch < w[1].epoch && w[0].base <= w[1].base)
        {
            fail("lineage out of order");
        }
        // Commits held back during a recovery are kept in delivery order, which is tid order
        // (some may already be applied by the recovery: they are skipped when it ends).
        if let RoleState::Follower(f) = &self.role {
            if !f
                .backlog
                .iter()
                .zip(f.backlog.iter().skip(1))
                .all(|((_, a), (_, b))| a.tid < b.tid)
            {
                fail("backlog out of tid order");
            }
        }
    }
}
