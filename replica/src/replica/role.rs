//! The role and the state only it has ([`RoleState`]), and the changes of role.
//!
//! - Every regular view: `Follower(Syncing)`, or `Follower(ReadOnly)` if it cannot elect,
//!   whatever the role was: a primary's state ends there (`views.rs`).
//! - The promise round: the chosen one becomes `Primary` once it holds the base
//!   (`election_round.rs`); the others catch up, then are `Follower(Backup)` (`recovery.rs`).
//!   A gap in the delivered commits sends a backup back to `Syncing` (`apply.rs`).
//! - A handover: the primary becomes `Follower(Backup)`, and the target `Primary` once it
//!   holds the old primary's last commit (`swap.rs`).
//! - A storage failure: `Down`, for good (`Replica::fail`).

use super::*;

/// The server's role, holding the state only that role has: the primary's commit path
/// cannot exist on a server that is not the primary, nor a recovery on the primary. The
/// public [`Role`] is derived from it ([`RoleState::role`]).
///
/// What every role shares stays in [`Replica`]: the view and its election (every member
/// runs it), the working primary (every member knows it), the durable positions reported
/// in the view (`applied`: filled by the election at every member, and the next primary
/// of the view counts them), the commits this server sent as primary and has not answered
/// (`in_flight`: a primary that hands over still answers them once a majority holds them;
/// they end with the view), and the requests held while a primary starts (`held`: taken
/// before there is one, served by it).
#[derive(Debug)]
pub(super) enum RoleState {
    /// Not the working primary: electing or catching up ([`Role::Syncing`]), outside a
    /// primary component ([`Role::ReadOnly`]), or applying the primary's commits
    /// ([`Role::Backup`]). The chosen primary is one until it holds the base.
    Follower(FollowerState),
    /// The working primary: from the end of its promise round (and its catching up) to the
    /// end of its view, its handover or its store.
    Primary(PrimaryState),
    /// Stopped after a storage failure.
    Down {
        /// Why the store failed.
        reason: String,
    },
}

/// Which role a follower has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FollowerRole {
    Syncing,
    ReadOnly,
    Backup,
}

impl From<FollowerRole> for Role {
    fn from(r: FollowerRole) -> Role {
        match r {
            FollowerRole::Syncing => Role::Syncing,
            FollowerRole::ReadOnly => Role::ReadOnly,
            FollowerRole::Backup => Role::Backup,
        }
    }
}

/// A follower's own state: catching up with the primary's history.
#[derive(Debug)]
pub(super) struct FollowerState {
    pub(super) role: FollowerRole,
    /// The recovery under way.
    pub(super) recovery: Option<Recovery>,
    /// Commits delivered during a recovery (or after a gap), applied once the stream
    /// reaches them; in delivery order.
    pub(super) backlog: VecDeque<(Tid, Transaction)>,
    /// The backlog outgrew [`BACKLOG_MAX`] and was dropped: fetch again before draining.
    pub(super) backlog_overflowed: bool,
}

impl FollowerState {
    pub(super) fn new(role: FollowerRole) -> FollowerState {
        FollowerState {
            role,
            recovery: None,
            backlog: VecDeque::new(),
            backlog_overflowed: false,
        }
    }
}

/// The primary's own state, which starts with its first commit (the epoch marker).
#[derive(Debug)]
pub(super) struct PrimaryState {
    /// The last tid it assigned: its next commit's `prev`.
    pub(super) last_assigned: Tid,
    /// It assigns no more tids (its view ended, or it is handing over): writes are held.
    pub(super) stopping: bool,
    /// The voter change it is carrying out.
    pub(super) voter_change: Option<VoterChange>,
    /// Its own vote grew: answers may be due (see `sync.rs`).
    pub(super) acks_due: bool,
    /// Client commits sent since it last wrote the client table (`crate::clients`).
    pub(super) commits_since_table: u64,
}

impl PrimaryState {
    /// A primary whose store ends at `last`.
    pub(super) fn new(last: Tid) -> PrimaryState {
        PrimaryState {
            last_assigned: last,
            stopping: false,
            voter_change: None,
            acks_due: false,
            commits_since_table: 0,
        }
    }

    /// The role ends: who is owed an answer (the requester of its voter change; how it is
    /// answered depends on why the role ended).
    pub(super) fn end(self) -> Option<ReqId> {
        self.voter_change.and_then(|c| c.req)
    }
}

impl RoleState {
    /// The public role.
    pub(super) fn role(&self) -> Role {
        match self {
            RoleState::Follower(f) => f.role.into(),
            RoleState::Primary(_) => Role::Primary,
            RoleState::Down { .. } => Role::Down,
        }
    }

    pub(super) fn primary(&self) -> Option<&PrimaryState> {
        match self {
            RoleState::Primary(p) => Some(p),
            _ => None,
        }
    }

    pub(super) fn primary_mut(&mut self) -> Option<&mut PrimaryState> {
        match self {
            RoleState::Primary(p) => Some(p),
            _ => None,
        }
    }

    pub(super) fn follower(&self) -> Option<&FollowerState> {
        match self {
            RoleState::Follower(f) => Some(f),
            _ => None,
        }
    }

    pub(super) fn follower_mut(&mut self) -> Option<&mut FollowerState> {
        match self {
            RoleState::Follower(f) => Some(f),
            _ => None,
        }
    }

    /// The recovery under way, if a follower has one.
    pub(super) fn recovery(&self) -> Option<&Recovery> {
        self.follower().and_then(|f| f.recovery.as_ref())
    }

    pub(super) fn recovery_mut(&mut self) -> Option<&mut Recovery> {
        self.follower_mut().and_then(|f| f.recovery.as_mut())
    }
}

impl<S: Storage> Replica<S> {
    /// Takes a follower's `role`, announced. A primary steps down: its voter change, if any,
    /// has an unknown outcome (`Retry`). A stopped server stays stopped.
    pub(super) fn set_role(&mut self, role: FollowerRole) {
        if let Some(r) = self.step_down(role).and_then(PrimaryState::end) {
            self.reply(r, Err(CommitError::Retry));
        }
    }

    /// Takes a follower's `role`, announced. A primary steps down: its own state ends here
    /// and is handed back, for the caller to answer what it owed ([`PrimaryState::end`]).
    /// A stopped server stays stopped.
    #[must_use]
    pub(super) fn step_down(&mut self, role: FollowerRole) -> Option<PrimaryState> {
        let from = self.role();
        let fresh = RoleState::Follower(FollowerState::new(role));
        let ended = match std::mem::replace(&mut self.role, fresh) {
            RoleState::Follower(f) => {
                self.role = RoleState::Follower(FollowerState { role, ..f });
                None
            }
            RoleState::Primary(p) => Some(p),
            down @ RoleState::Down { .. } => {
                self.role = down;
                return None;
            }
        };
        self.announce_role(from);
        ended
    }

    /// Tells the shell (and the log) the role it has now, `from` being the one before.
    pub(super) fn announce_role(&mut self, from: Role) {
        let role = self.role();
        let info = RoleInfo {
            role,
            primary: self.primary,
            in_primary_component: self.view.as_ref().is_some_and(|v| v.primary_component),
            promised: self.durable.promised,
            view: self
                .view
                .as_ref()
                .map(|v| v.members.clone())
                .unwrap_or_default(),
        };
        if from != role || role == Role::Primary || role == Role::Backup {
            tracing::info!(server = self.me, ?role, primary = ?self.primary, "role");
        }
        self.out.push_back(Output::Role(info));
    }
}
