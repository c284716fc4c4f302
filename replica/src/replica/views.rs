//! A new gcs view: what ends with the old one, and the start of the election round.

use super::*;

impl<S: Storage> Replica<S> {
    /// A gcs view was installed.
    pub fn handle_view(&mut self, now: Time, view: &View) {
        if self.role() == Role::Down {
            return;
        }
        self.now = now;
        if let Err(e) = self.flush_applies() {
            return self.fail(e);
        }
        // Every ring member takes part, whether or not this server's configuration names it
        // yet (a replica added while this server was rebuilt or cut off): the election is a
        // function of the states delivered, the same at every member, never of a local file.
        // Votes come from the configurations reported, so an unknown member weighs nothing.
        let mut members: Vec<ServerId> = view.members.iter().map(|p: &ProcId| p.node).collect();
        members.dedup();
        let regular = view.kind() == ViewKind::Regular;
        if !regular {
            // The old view ends: commits still arrive (the transitional set's), but nothing
            // new is accepted until the next regular view elects.
            if let Some(v) = self.view.as_mut() {
                v.regular = false;
            }
            if let RoleState::Primary(p) = &mut self.role {
                p.stopping = true;
            }
            return;
        }
        // Under this server's own configuration; the members' states decide (every
        // configuration they report must agree), so a server that says no here still tells
        // the others its state.
        let primary_component = self.voters.is_primary_component(&members);
        let from = self.role();
        let was_primary_in = match (&self.role, self.primary) {
            (RoleState::Primary(_), Some((_, e))) => Some(e),
            _ => None,
        };
        // Everything in flight from the previous view has an unknown outcome now.
        let pending = std::mem::take(&mut self.in_flight.pending);
        for p in pending.into_values().filter(|p| !p.answered) {
            for r in p.reqs {
                self.reply(r, Err(CommitError::Retry));
            }
        }
        for (_, r, _) in std::mem::take(&mut self.in_flight.dup_waiting) {
            self.reply(r, Err(CommitError::Retry));
        }
        self.in_flight.serial.clear();
        self.in_flight.keys.clear();
        self.applied.clear();
        self.states.clear();
        self.election = None;
        self.primary = None;
        // The role's own state ends with the view: a primary's (its voter change has an
        // unknown outcome), a follower's recovery and backlog.
        let role = if primary_component {
            FollowerRole::Syncing
        } else {
            FollowerRole::ReadOnly
        };
        let ended = std::mem::replace(
            &mut self.role,
            RoleState::Follower(FollowerState::new(role)),
        );
        if let RoleState::Primary(p) = ended {
            if let Some(r) = p.end() {
                self.reply(r, Err(CommitError::Retry));
            }
        }
        self.view = Some(CurrentView {
            members,
            regular: true,
            primary_component,
        });
        let fill_open = self.durable.fill_since.is_some();
        // With a fill open, what it holds is its own log up to `last`. After a restart its
        // lineage object may be the donor's (filled), newer than that log: report only the
        // epochs that log reaches (an epoch based at `b` starts after tid `b`), so that the
        // election does not take it for more than it holds (`choose_donor`).
        let lineage = if fill_open {
            let last = self.last;
            self.lineage
                .iter()
                .filter(|e| e.base < last)
                .cloned()
                .collect()
        } else {
            self.lineage.clone()
        };
        let state = MemberState {
            server: self.me,
            promised: self.durable.promised,
            last_tid: self.last,
            lineage,
            primary_in: was_primary_in,
            consistent: !fill_open,
            voter: self.durable.voter,
            config: self.voters.clone(),
            config_tid: self.voters_tid,
        };
        self.multicast(Service::Agreed, Msg::State(state));
        self.announce_role(from);
        if !primary_component {
            self.send_held_away(None);
        }
    }

    /// This view cannot elect after all: read-only, and held requests are sent away.
    pub(super) fn not_primary_component(&mut self) {
        if let Some(v) = self.view.as_mut() {
            v.primary_component = false;
        }
        self.set_role(FollowerRole::ReadOnly);
        self.send_held_away(None);
    }

    /// Held requests are answered: not here, `primary` is.
    pub(super) fn send_held_away(&mut self, primary: Option<ServerId>) {
        for (req, _) in std::mem::take(&mut self.held) {
            self.reply(req, Err(CommitError::NotPrimary { primary }));
        }
    }
}
