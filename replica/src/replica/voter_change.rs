//! Changing who votes while running, on the primary: learners catch up, then the joint
//! configuration, then the new one (the rule is in [`crate::voters`]).
//!
//! ```text
//!  request(target) ─► CatchUp: every new voter reported `until` applied, and the current
//!       │             configuration is durable on a majority of it
//!       ▼
//!  Joint: (old, target) written; durable on a majority of both
//!       ▼
//!  Final: target written; durable on a majority of it ─► answered with its tid
//! ```
//!
//! A view change ends the request (answered `Retry`); a primary that starts on a store whose
//! configuration is joint finishes that change by itself, so a change never stays half done.
//!
//! Operators reach it through `standby add-server` and `replace-server` (the new server joins
//! as a read replica, then gets a vote, taking the old one's in the same change, then the old
//! one leaves) and `remove-server` (the vote first, then the server): each combines a voter
//! change with the storage server's membership of read replicas.

use super::*;

/// The group name of servers added while running (see `servercore::membership`): they may be
/// given a vote, unlike the remote groups of the configuration file.
pub const ADDED_GROUP: &str = "added";

/// Where a voter change stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum ChangeStep {
    /// New voters catch up as learners: each must have reported `until` applied.
    CatchUp { until: Tid },
    /// The joint configuration was sent at `tid`.
    Joint { tid: Tid },
    /// The target configuration was sent at `tid`.
    Final { tid: Tid },
}

/// A voter change the primary is carrying out.
#[derive(Clone, Debug)]
pub(super) struct VoterChange {
    /// Who asked (`None`: a change a previous primary left joint).
    pub(super) req: Option<ReqId>,
    pub(super) target: VoterSet,
    pub(super) step: ChangeStep,
}

impl<S: Storage> Replica<S> {
    /// An operator asks for voters to be added (with their weights) and removed. The change
    /// applies to the voters as the primary has them (the target of a change under way, if
    /// any), so asking again after an unknown outcome asks for the same target. Answered with
    /// [`Output::Reply`] once the new configuration is durable on a majority of it (its tid),
    /// or refused with [`CommitError::Invalid`] (the reason), [`CommitError::NotPrimary`], or
    /// [`CommitError::Retry`] if the view changed on the way (asking again continues where
    /// it stopped).
    pub fn handle_voter_change(
        &mut self,
        now: Time,
        req: ReqId,
        add: &[(ServerId, u32)],
        remove: &[ServerId],
    ) {
        self.now = now;
        if let Err(e) = self.flush_applies() {
            return self.fail(e);
        }
        let Some(p) = self.role.primary().filter(|p| !p.stopping) else {
            let primary = self.primary.map(|(p, _)| p).filter(|p| *p != self.me);
            return self.reply(req, Err(CommitError::NotPrimary { primary }));
        };
        let last_assigned = p.last_assigned;
        let under_way = p.voter_change.as_ref().map(|c| c.target.clone());
        if let Some(id) = add.iter().map(|(id, _)| *id).find(|id| remove.contains(id)) {
            let why = format!("s{id} both added and removed");
            return self.reply(req, Err(CommitError::Invalid(why)));
        }
        if let Some((id, _)) = add.iter().find(|(_, w)| *w == 0) {
            let why = format!("s{id} added with weight 0");
            return self.reply(req, Err(CommitError::Invalid(why)));
        }
        let base = match &under_way {
            Some(t) => t.clone(),
            None => self.voters.voters.clone(),
        };
        let target = VoterSet::new(
            base.iter()
                .filter(|(id, _)| !remove.contains(id) && !add.iter().any(|(a, _)| a == id))
                .chain(add.iter().copied()),
        );
        if let Err(why) = self.check_target(&target) {
            return self.reply(req, Err(CommitError::Invalid(why)));
        }
        if let Some(t) = under_way {
            if t != target {
                let why = format!("a change to {t} is under way");
                return self.reply(req, Err(CommitError::Invalid(why)));
            }
            let change = self
                .role
                .primary_mut()
                .and_then(|p| p.voter_change.as_mut());
            if let Some(old) = change.and_then(|c| c.req.replace(req)) {
                self.reply(old, Err(CommitError::Retry));
            }
            return;
        }
        if !self.voters.is_joint() && self.voters.voters == target {
            if self.voters_tid <= self.majority_applied() {
                let epoch = self.primary.map(|(_, e)| e).unwrap_or_default();
                return self.reply(
                    req,
                    Ok(Committed {
                        tid: self.voters_tid,
                        epoch,
                        duplicate: true,
                    }),
                );
            }
            // Written, not yet durable: wait for it like the last step of a change.
            let tid = self.voters_tid;
            if let Some(p) = self.role.primary_mut() {
                p.voter_change = Some(VoterChange {
                    req: Some(req),
                    target,
                    step: ChangeStep::Final { tid },
                });
            }
            return;
        }
        if self.voters.is_joint() {
            // Finished by the primary itself (see `start_pending_change`); not yet done.
            let why = format!("a change to {} is under way", self.voters.voters);
            return self.reply(req, Err(CommitError::Invalid(why)));
        }
        tracing::info!(server = self.me, from = %self.voters, to = %target, "voter change");
        if let Some(p) = self.role.primary_mut() {
            p.voter_change = Some(VoterChange {
                req: Some(req),
                target,
                step: ChangeStep::CatchUp {
                    until: last_assigned,
                },
            });
        }
        self.drive_voter_change();
    }

    /// Why `target` cannot be the voter set, if it cannot.
    fn check_target(&self, target: &VoterSet) -> Result<(), String> {
        if target.is_empty() {
            return Err("no voters: nobody could ever be primary".into());
        }
        if target.len() > crate::voters::VOTERS_MAX {
            return Err(format!(
                "{} voters, at most {}",
                target.len(),
                crate::voters::VOTERS_MAX
            ));
        }
        for (id, _) in target.iter() {
            let Some(s) = self.cfg.server(id) else {
                return Err(format!("s{id} is not a member: add it as a replica first"));
            };
            if s.kind == crate::config::GroupKind::Remote && s.group != ADDED_GROUP {
                return Err(format!(
                    "s{id} is in remote group {:?}: remote groups never vote",
                    s.group
                ));
            }
            if !self.voters.votes(id) && !self.in_view(id) {
                return Err(format!(
                    "s{id} is not in the primary's view: start it and let it join first"
                ));
            }
        }
        if !target.contains(self.me) {
            return Err(format!(
                "s{} is the primary: swap to a server that stays a voter first",
                self.me
            ));
        }
        Ok(())
    }

    /// A new primary whose store holds a joint configuration finishes that change.
    pub(super) fn start_pending_change(&mut self) {
        let Some(p) = self.role.primary_mut() else {
            return;
        };
        if self.voters.is_joint() && p.voter_change.is_none() {
            tracing::info!(server = self.me, voters = %self.voters, "finishing a voter change");
            p.voter_change = Some(VoterChange {
                req: None,
                target: self.voters.voters.clone(),
                step: ChangeStep::Joint {
                    tid: self.voters_tid,
                },
            });
        }
    }

    /// Moves the change on as reports come in (called with every durability update).
    pub(super) fn drive_voter_change(&mut self) {
        loop {
            let Some(p) = self.role.primary().filter(|p| !p.stopping) else {
                return;
            };
            let Some(c) = p.voter_change.clone() else {
                return;
            };
            let last_assigned = p.last_assigned;
            let durable = self.majority_applied().min(self.last);
            let next = match c.step {
                ChangeStep::CatchUp { until } => {
                    let learners_ready = c.target.iter().all(|(id, _)| {
                        self.voters.votes(id) || self.applied.get(&id).is_some_and(|t| *t >= until)
                    });
                    if !learners_ready || durable < self.voters_tid {
                        return;
                    }
                    let joint = VoterConfig {
                        voters: c.target.clone(),
                        old: Some(self.voters.voters.clone()),
                    };
                    match self.send_voters(&joint, last_assigned) {
                        Ok(tid) => ChangeStep::Joint { tid },
                        Err(e) => return self.fail(e),
                    }
                }
                ChangeStep::Joint { tid } => {
                    // The joint configuration must be ours (applied here) and durable on a
                    // majority of both sets, which `majority_applied` then asks.
                    if self.voters_tid < tid || !self.voters.is_joint() || durable < tid {
                        return;
                    }
                    // A primary elected on the old set alone (a change left joint by another)
                    // does not vote in the new one: it leaves the change joint, which is safe,
                    // until an operator swaps to a voter of the new set, who finishes it.
                    if !c.target.contains(self.me) {
                        tracing::warn!(
                            server = self.me,
                            voters = %self.voters,
                            "not a voter of the new set: swap to one to finish the change"
                        );
                        return;
                    }
                    match self.send_voters(&VoterConfig::single(c.target.clone()), last_assigned) {
                        Ok(tid) => ChangeStep::Final { tid },
                        Err(e) => return self.fail(e),
                    }
                }
                ChangeStep::Final { tid } => {
                    if self.voters_tid < tid || durable < tid {
                        return;
                    }
                    tracing::info!(server = self.me, voters = %self.voters, %tid, "voter change done");
                    if let Some(p) = self.role.primary_mut() {
                        p.voter_change = None;
                    }
                    if let Some(req) = c.req {
                        let epoch = self.primary.map(|(_, e)| e).unwrap_or_default();
                        self.reply(
                            req,
                            Ok(Committed {
                                tid,
                                epoch,
                                duplicate: false,
                            }),
                        );
                    }
                    return;
                }
            };
            if let Some(c) = self
                .role
                .primary_mut()
                .and_then(|p| p.voter_change.as_mut())
            {
                c.step = next;
            }
        }
    }

    /// Writes a voter configuration as the primary's next transaction (after
    /// `last_assigned`); its tid.
    fn send_voters(
        &mut self,
        config: &VoterConfig,
        last_assigned: Tid,
    ) -> Result<Tid, StorageError> {
        let tid = Tid(last_assigned.0 + 1);
        tracing::info!(server = self.me, voters = %config, %tid, "writing voters");
        let txn = Transaction {
            tid,
            meta: TxnMeta {
                user: Bytes::from_static(b"standby"),
                description: Bytes::from(format!("voters {config}")),
                extension: Bytes::new(),
                time: 0,
                request: None,
            },
            records: vec![Record {
                oid: voters_oid(),
                data: Some(config.encode()),
                expected_serial: None,
            }],
        };
        self.primary_send(txn, None)?;
        Ok(tid)
    }
}
