//! Checkers for Extended Virtual Synchrony (EVS) run on every simulated [`History`].
//!
//! Each property lives in its own module and is checked by `check(h, out)`, which appends
//! [`Violation`]s (at most [`CAP`] per property, then one summary line). [`check_all`] runs every
//! checker on one shared [`Index`] of the history, in the fixed order of the table below.
//!
//! The properties follow Moser, Amir, Melliar-Smith and Agarwal, "Extended Virtual Synchrony"
//! (ICDCS 1994), section 3 ("specifications"), adapted to this system's view ids: a transitional
//! view carries the ring id of the regular view it leads into.
//!
//! | property                 | file                        | EVS paper                         |
//! |--------------------------|-----------------------------|-----------------------------------|
//! | `no_duplicate_delivery`  | `no_duplicate_delivery.rs`  | 2.2 (delivered at most once)      |
//! | `no_spurious_delivery`   | `no_spurious_delivery.rs`   | 2.1 (delivered only if sent)      |
//! | `views_well_formed`      | `views_well_formed.rs`      | 1.1, 1.3, 4 (configuration shape) |
//! | `view_ids_ordered`       | `view_ids_ordered.rs`       | 1.2 (configurations in order)     |
//! | `view_ids_unique`        | `view_ids_unique.rs`        | 1.1 (one membership per config)   |
//! | `view_agreement`         | `view_agreement.rs`         | 1.4 (members install it too)      |
//! | `transitional_semantics` | `transitional_semantics.rs` | 4 (transitional membership)       |
//! | `same_view_delivery`     | `same_view_delivery.rs`     | 2.3 (delivered in one config)     |
//! | `failure_atomicity`      | `failure_atomicity.rs`      | 3 (failure atomicity)             |
//! | `self_delivery`          | `self_delivery.rs`          | 2.4 (self-delivery)               |
//! | `agreed_order`           | `agreed_order.rs`           | 6.1, 6.2 (total order)            |
//! | `causal_order`           | `causal_order.rs`           | 5 (causal order)                  |
//! | `fifo_order`             | `fifo_order.rs`             | 5 restricted to one sender        |
//! | `safe_delivery`          | `safe_delivery.rs`          | 7.1, 7.2 (safe delivery)          |
//! | `liveness`               | `liveness.rs`               | 1.4 / termination once calm       |
//!
//! Terms used by the modules:
//! - "p delivered m in V": a `Delivered` event after V's `View` event and before p's next `View`.
//! - origin(p, m): the regular view in which p delivered m; if p delivered m in a transitional
//!   view T, the last regular view p installed before T.
//! - A view's *key* ([`ViewKey`]): its id, plus for a transitional view the id of the regular
//!   view it comes from. Two groups merging into one ring N each install a transitional view with
//!   the same `ViewId` but different members (one per previous regular view), so a transitional
//!   configuration is identified by (N, previous regular view), not by its id alone.

use crate::history::{Event, History, MsgId};
use gcs::{ProcId, Service, Time, View, ViewId, ViewKind};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

pub mod agreed_order;
pub mod causal_order;
pub mod failure_atomicity;
pub mod fifo_order;
pub mod liveness;
pub mod no_duplicate_delivery;
pub mod no_spurious_delivery;
pub mod safe_delivery;
pub mod same_view_delivery;
pub mod self_delivery;
pub mod transitional_semantics;
pub mod view_agreement;
pub mod view_ids_ordered;
pub mod view_ids_unique;
pub mod views_well_formed;

/// At most this many violations are reported per property (then one summary line).
pub const CAP: usize = 20;

/// One breach of one property.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Violation {
    /// The property's name, e.g. `"agreed_order"`.
    pub property: &'static str,
    /// The processes involved (may be empty).
    pub procs: Vec<ProcId>,
    /// The message involved, if one.
    pub msg: Option<MsgId>,
    /// What went wrong, for a human.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: procs [", self.property)?;
        for (i, p) in self.procs.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{p}")?;
        }
        write!(f, "]")?;
        if let Some(m) = self.msg {
            write!(f, " msg {}", fmt_msg(m))?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// `n1.0#7`: message 7 of process n1.0.
pub fn fmt_msg(m: MsgId) -> String {
    format!("{}#{}", m.sender, m.n)
}

/// Violations one a line (for a failing test's message).
pub fn fmt_violations(v: &[Violation]) -> String {
    v.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The command that replays one seed of a mode (`gcs`, `replica`, `groups`) with its trace.
pub fn replay_command(mode: &str, seed: u64, nodes: usize) -> String {
    format!("cargo run -p sim --release -- {mode} --seed {seed} --nodes {nodes} --trace")
}

/// A checker's standalone entry point.
pub type Checker = fn(&History, &mut Vec<Violation>);

/// Every property with its standalone checker, in the order of the module table (and of
/// [`check_all`]'s output).
pub const CHECKERS: [(&str, Checker); 15] = [
    (
        no_duplicate_delivery::PROPERTY,
        no_duplicate_delivery::check,
    ),
    (no_spurious_delivery::PROPERTY, no_spurious_delivery::check),
    (views_well_formed::PROPERTY, views_well_formed::check),
    (view_ids_ordered::PROPERTY, view_ids_ordered::check),
    (view_ids_unique::PROPERTY, view_ids_unique::check),
    (view_agreement::PROPERTY, view_agreement::check),
    (
        transitional_semantics::PROPERTY,
        transitional_semantics::check,
    ),
    (same_view_delivery::PROPERTY, same_view_delivery::check),
    (failure_atomicity::PROPERTY, failure_atomicity::check),
    (self_delivery::PROPERTY, self_delivery::check),
    (agreed_order::PROPERTY, agreed_order::check),
    (causal_order::PROPERTY, causal_order::check),
    (fifo_order::PROPERTY, fifo_order::check),
    (safe_delivery::PROPERTY, safe_delivery::check),
    (liveness::PROPERTY, liveness::check),
];

/// Runs every checker on `h`, in the order of the module table; deterministic.
pub fn check_all(h: &History) -> Vec<Violation> {
    let ix = Index::new(h);
    let mut out = Vec::new();
    no_duplicate_delivery::check_index(&ix, &mut out);
    no_spurious_delivery::check_index(&ix, &mut out);
    views_well_formed::check_index(&ix, &mut out);
    view_ids_ordered::check_index(&ix, &mut out);
    view_ids_unique::check_index(&ix, &mut out);
    view_agreement::check_index(&ix, &mut out);
    transitional_semantics::check_index(&ix, &mut out);
    same_view_delivery::check_index(&ix, &mut out);
    failure_atomicity::check_index(&ix, &mut out);
    self_delivery::check_index(&ix, &mut out);
    agreed_order::check_index(&ix, &mut out);
    causal_order::check_index(&ix, &mut out);
    fifo_order::check_index(&ix, &mut out);
    safe_delivery::check_index(&ix, &mut out);
    liveness::check_index(&ix, &mut out);
    out
}

/// Collects one property's violations into `out`, keeping at most [`CAP`]; when dropped, adds
/// one line counting the ones left out.
pub(crate) struct Sink<'o> {
    property: &'static str,
    out: &'o mut Vec<Violation>,
    count: usize,
}

impl<'o> Sink<'o> {
    pub(crate) fn new(property: &'static str, out: &'o mut Vec<Violation>) -> Self {
        Sink {
            property,
            out,
            count: 0,
        }
    }

    /// Whether more reports would still be shown (lets a checker stop early).
    pub(crate) fn full(&self) -> bool {
        self.count >= CAP
    }

    pub(crate) fn report(&mut self, procs: Vec<ProcId>, msg: Option<MsgId>, detail: String) {
        if self.count < CAP {
            self.out.push(Violation {
                property: self.property,
                procs,
                msg,
                detail,
            });
        }
        self.count += 1;
    }
}

impl Drop for Sink<'_> {
    fn drop(&mut self) {
        if self.count > CAP {
            self.out.push(Violation {
                property: self.property,
                procs: Vec::new(),
                msg: None,
                detail: format!("... and {} more violations not shown", self.count - CAP),
            });
        }
    }
}

/// A dense number for each `MsgId` seen in the history (sent or delivered).
pub(crate) type Mix = u32;

/// "Not delivered" in [`ProcIx::del_pos`].
pub(crate) const NONE: u32 = u32::MAX;

/// Identity of a configuration: the view id, plus for a transitional view the regular view it
/// comes from (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) struct ViewKey {
    pub(crate) id: ViewId,
    pub(crate) from: Option<ViewId>,
}

/// One `View` event of one process, with what the process delivered in it.
pub(crate) struct ViewRec<'h> {
    pub(crate) view: &'h View,
    /// Index of the `View` event in the log.
    pub(crate) ev: usize,
    /// The deliveries in this view, as a range of [`ProcIx::dels`].
    pub(crate) dels: Range<usize>,
    /// The last regular view installed before this one, if any.
    pub(crate) prev_regular: Option<ViewId>,
    /// Index (in [`ProcIx::views`]) of the next `View` event, if any.
    pub(crate) next: Option<usize>,
    /// Index (in [`ProcIx::views`]) of the regular view that is this view's origin: itself if
    /// regular, else the last regular view before it.
    pub(crate) origin_ix: Option<usize>,
}

impl ViewRec<'_> {
    pub(crate) fn id(&self) -> ViewId {
        self.view.id
    }

    pub(crate) fn kind(&self) -> ViewKind {
        self.view.id.kind
    }

    /// The regular view that messages delivered in this view belong to.
    pub(crate) fn origin(&self) -> Option<ViewId> {
        match self.kind() {
            ViewKind::Regular => Some(self.view.id),
            ViewKind::Transitional => self.prev_regular,
        }
    }

    pub(crate) fn key(&self) -> ViewKey {
        ViewKey {
            id: self.view.id,
            from: match self.kind() {
                ViewKind::Regular => None,
                ViewKind::Transitional => self.prev_regular,
            },
        }
    }

    pub(crate) fn has(&self, q: ProcId) -> bool {
        self.view.members.contains(&q)
    }
}

/// One `Delivered` event.
pub(crate) struct DelRec {
    pub(crate) m: Mix,
    pub(crate) msg: MsgId,
    pub(crate) service: Service,
    pub(crate) at: Time,
    pub(crate) payload_ok: bool,
    /// Index of the view (in [`ProcIx::views`]) it was delivered in; `None` before any view.
    pub(crate) view: Option<usize>,
    /// Index of the event in the log.
    pub(crate) ev: usize,
}

/// One `Sent` event.
pub(crate) struct SendRec {
    pub(crate) m: Mix,
    pub(crate) msg: MsgId,
    pub(crate) service: Service,
    pub(crate) at: Time,
    /// Index of the event in the log.
    pub(crate) ev: usize,
}

/// Everything about one process, indexed.
pub(crate) struct ProcIx<'h> {
    pub(crate) id: ProcId,
    pub(crate) log: &'h [Event],
    pub(crate) crashed: bool,
    pub(crate) views: Vec<ViewRec<'h>>,
    /// Every `Delivered` event, in log order (duplicates included).
    pub(crate) dels: Vec<DelRec>,
    /// Every `Sent` event, in log order.
    pub(crate) sends: Vec<SendRec>,
    /// Per message: index in `dels` of its first delivery, or [`NONE`].
    pub(crate) del_pos: Vec<u32>,
    /// The largest view id installed, if any.
    pub(crate) max_view: Option<ViewId>,
}

impl ProcIx<'_> {
    pub(crate) fn delivered(&self, m: Mix) -> bool {
        self.del_pos[m as usize] != NONE
    }

    /// Whether `dels[i]` is the first delivery of its message (later ones are duplicates).
    pub(crate) fn is_first(&self, i: usize) -> bool {
        self.del_pos[self.dels[i].m as usize] as usize == i
    }

    /// Origin of the delivery `d` at this process.
    pub(crate) fn origin_of(&self, d: &DelRec) -> Option<ViewId> {
        d.view.and_then(|v| self.views[v].origin())
    }
}

/// Dense numbers for message ids: per sender a table indexed by `n` (when `n` is plausible,
/// which it is unless the history is corrupt), else a map.
struct Numbering {
    senders: BTreeMap<ProcId, Vec<Mix>>,
    other: BTreeMap<MsgId, Mix>,
    msgs: Vec<MsgId>,
    limit: u64,
}

impl Numbering {
    fn new(limit: u64) -> Self {
        Numbering {
            senders: BTreeMap::new(),
            other: BTreeMap::new(),
            msgs: Vec::new(),
            limit,
        }
    }

    fn insert(&mut self, m: MsgId) {
        let next = self.msgs.len() as Mix;
        let slot = if m.n < self.limit {
            let table = self.senders.entry(m.sender).or_default();
            let n = m.n as usize;
            if table.len() <= n {
                table.resize(n + 1, NONE);
            }
            &mut table[n]
        } else {
            self.other.entry(m).or_insert(NONE)
        };
        if *slot == NONE {
            *slot = next;
            self.msgs.push(m);
        }
    }

    /// The number of a message given to `insert`.
    fn get(&self, m: MsgId) -> Mix {
        if m.n < self.limit {
            self.senders[&m.sender][m.n as usize]
        } else {
            self.other[&m]
        }
    }
}

/// A shared, precomputed index of a history, built once by [`check_all`].
pub(crate) struct Index<'h> {
    pub(crate) h: &'h History,
    /// Dense number -> message.
    pub(crate) msgs: Vec<MsgId>,
    /// Processes in `ProcId` order.
    pub(crate) procs: Vec<ProcIx<'h>>,
    pub(crate) proc_ix: BTreeMap<ProcId, usize>,
    /// Per message: (index in `procs`, index in its `sends`) of the first `Sent` event for it in
    /// the log of `msg.sender`.
    pub(crate) sent: Vec<Option<(usize, usize)>>,
    /// Per message: the origin at the first process (in `ProcId` order) that delivered it in a
    /// view with an origin.
    pub(crate) origin: Vec<Option<ViewId>>,
}

impl<'h> Index<'h> {
    pub(crate) fn new(h: &'h History) -> Self {
        // Number the messages.
        let total: usize = h.procs.values().map(Vec::len).sum();
        let mut ids = Numbering::new(total as u64);
        for log in h.procs.values() {
            for e in log {
                if let Event::Sent { msg, .. } | Event::Delivered { msg, .. } = e {
                    ids.insert(*msg);
                }
            }
        }
        let msgs = std::mem::take(&mut ids.msgs);
        let nmsgs = msgs.len();

        let mut procs = Vec::with_capacity(h.procs.len());
        let mut proc_ix = BTreeMap::new();
        for (&id, log) in &h.procs {
            let mut px = ProcIx {
                id,
                log,
                crashed: false,
                views: Vec::new(),
                dels: Vec::new(),
                sends: Vec::new(),
                del_pos: vec![NONE; nmsgs],
                max_view: None,
            };
            let mut prev_regular = None;
            let mut prev_regular_ix = None;
            for (ev, e) in log.iter().enumerate() {
                match e {
                    Event::View { view, .. } => {
                        let nd = px.dels.len();
                        let new_ix = px.views.len();
                        if let Some(last) = px.views.last_mut() {
                            last.dels.end = nd;
                            last.next = Some(new_ix);
                        }
                        px.views.push(ViewRec {
                            view,
                            ev,
                            dels: nd..nd,
                            prev_regular,
                            next: None,
                            origin_ix: prev_regular_ix,
                        });
                        if view.id.kind == ViewKind::Regular {
                            prev_regular = Some(view.id);
                            prev_regular_ix = Some(new_ix);
                            px.views[new_ix].origin_ix = Some(new_ix);
                        }
                        px.max_view = px.max_view.max(Some(view.id));
                    }
                    Event::Delivered {
                        msg,
                        service,
                        at,
                        payload_ok,
                    } => {
                        let m = ids.get(*msg);
                        if px.del_pos[m as usize] == NONE {
                            px.del_pos[m as usize] = px.dels.len() as u32;
                        }
                        px.dels.push(DelRec {
                            m,
                            msg: *msg,
                            service: *service,
                            at: *at,
                            payload_ok: *payload_ok,
                            view: px.views.len().checked_sub(1),
                            ev,
                        });
                    }
                    Event::Sent { msg, service, at } => {
                        px.sends.push(SendRec {
                            m: ids.get(*msg),
                            msg: *msg,
                            service: *service,
                            at: *at,
                            ev,
                        });
                    }
                    Event::Crashed { .. } => px.crashed = true,
                }
            }
            let nd = px.dels.len();
            if let Some(last) = px.views.last_mut() {
                last.dels.end = nd;
            }
            proc_ix.insert(id, procs.len());
            procs.push(px);
        }

        let mut sent = vec![None; nmsgs];
        let mut origin = vec![None; nmsgs];
        for (pi, px) in procs.iter().enumerate() {
            for (i, s) in px.sends.iter().enumerate() {
                if s.msg.sender == px.id && sent[s.m as usize].is_none() {
                    sent[s.m as usize] = Some((pi, i));
                }
            }
            for (i, d) in px.dels.iter().enumerate() {
                if px.is_first(i) && origin[d.m as usize].is_none() {
                    origin[d.m as usize] = px.origin_of(d);
                }
            }
        }
        Index {
            h,
            msgs,
            procs,
            proc_ix,
            sent,
            origin,
        }
    }

    pub(crate) fn proc(&self, p: ProcId) -> Option<&ProcIx<'h>> {
        self.proc_ix.get(&p).map(|&i| &self.procs[i])
    }

    /// The `Sent` event of message `m` in its sender's log.
    pub(crate) fn sent_rec(&self, m: Mix) -> Option<&SendRec> {
        let (p, i) = self.sent[m as usize]?;
        Some(&self.procs[p].sends[i])
    }

    /// True if `p` crashed (a process without a log never crashed).
    pub(crate) fn crashed(&self, p: ProcId) -> bool {
        self.proc(p).is_some_and(|px| px.crashed)
    }
}

#[cfg(test)]
pub(crate) mod fixture {
    //! Compact hand-written histories: processes are small numbers (node n, incarnation 0),
    //! rings are sequence numbers (representative n0.0), time advances by 1 per event.

    use super::{check_all, Violation};
    use crate::history::{Event, History, MsgId};
    use gcs::{ProcId, RingId, Service, Time, View, ViewId, ViewKind};

    pub(crate) use gcs::Service::{Agreed, Causal, Fifo, Reliable, Safe, Unreliable};

    pub(crate) fn p(n: u32) -> ProcId {
        ProcId::new(n, 0)
    }

    pub(crate) fn msg(sender: u32, n: u64) -> MsgId {
        MsgId {
            sender: p(sender),
            n,
        }
    }

    pub(crate) fn vid(seq: u64, kind: ViewKind) -> ViewId {
        ViewId {
            ring: RingId { seq, rep: p(0) },
            kind,
        }
    }

    #[derive(Default)]
    pub(crate) struct B {
        h: History,
        t: u64,
    }

    impl B {
        pub(crate) fn new() -> Self {
            B::default()
        }

        fn push(&mut self, q: u32, e: impl FnOnce(Time) -> Event) -> &mut Self {
            self.t += 1;
            let at = Time(self.t);
            self.h.procs.entry(p(q)).or_default().push(e(at));
            self
        }

        pub(crate) fn view(
            &mut self,
            q: u32,
            seq: u64,
            kind: ViewKind,
            members: &[u32],
        ) -> &mut Self {
            let view = View {
                id: vid(seq, kind),
                members: members.iter().map(|&n| p(n)).collect(),
            };
            self.push(q, |at| Event::View { view, at })
        }

        /// Regular view `seq` installed by `q`.
        pub(crate) fn reg(&mut self, q: u32, seq: u64, members: &[u32]) -> &mut Self {
            self.view(q, seq, ViewKind::Regular, members)
        }

        /// View `seq` of `kind` installed by each of `members`.
        fn view_all(&mut self, seq: u64, kind: ViewKind, members: &[u32]) -> &mut Self {
            for &q in members {
                self.view(q, seq, kind, members);
            }
            self
        }

        /// Regular view `seq` installed by each of `members`.
        pub(crate) fn reg_all(&mut self, seq: u64, members: &[u32]) -> &mut Self {
            self.view_all(seq, ViewKind::Regular, members)
        }

        /// Transitional view leading to ring `seq`, installed by `q`.
        pub(crate) fn trans(&mut self, q: u32, seq: u64, members: &[u32]) -> &mut Self {
            self.view(q, seq, ViewKind::Transitional, members)
        }

        /// Transitional view leading to ring `seq`, installed by each of `members`.
        pub(crate) fn trans_all(&mut self, seq: u64, members: &[u32]) -> &mut Self {
            self.view_all(seq, ViewKind::Transitional, members)
        }

        pub(crate) fn send(&mut self, q: u32, n: u64, service: Service) -> &mut Self {
            self.send_as(q, (q, n), service)
        }

        /// A `Sent` event for message `(s, n)` in the log of `q` (a forgery unless `q == s`).
        pub(crate) fn send_as(
            &mut self,
            q: u32,
            (s, n): (u32, u64),
            service: Service,
        ) -> &mut Self {
            let msg = msg(s, n);
            self.push(q, |at| Event::Sent { msg, service, at })
        }

        pub(crate) fn deliver(
            &mut self,
            q: u32,
            (s, n): (u32, u64),
            service: Service,
        ) -> &mut Self {
            self.delivered(q, msg(s, n), service, true)
        }

        fn delivered(
            &mut self,
            q: u32,
            msg: MsgId,
            service: Service,
            payload_ok: bool,
        ) -> &mut Self {
            self.push(q, |at| Event::Delivered {
                msg,
                service,
                at,
                payload_ok,
            })
        }

        /// Each of `qs` delivers the message, in order.
        pub(crate) fn deliver_all(
            &mut self,
            qs: &[u32],
            m: (u32, u64),
            service: Service,
        ) -> &mut Self {
            for &q in qs {
                self.deliver(q, m, service);
            }
            self
        }

        /// `q` sends `n` and every one of `qs` delivers it.
        pub(crate) fn bcast(&mut self, q: u32, n: u64, service: Service, qs: &[u32]) -> &mut Self {
            self.send(q, n, service);
            self.deliver_all(qs, (q, n), service)
        }

        pub(crate) fn deliver_corrupt(
            &mut self,
            q: u32,
            (s, n): (u32, u64),
            service: Service,
        ) -> &mut Self {
            self.delivered(q, msg(s, n), service, false)
        }

        pub(crate) fn crash(&mut self, q: u32) -> &mut Self {
            self.push(q, |at| Event::Crashed { at })
        }

        /// The network is calm from now on.
        pub(crate) fn calm(&mut self) -> &mut Self {
            self.h.calm_from = Some(Time(self.t));
            self
        }

        pub(crate) fn build(&self) -> History {
            let mut h = self.h.clone();
            h.end = Time(self.t + 1);
            h.sends_until = h.end;
            h
        }
    }

    /// The violations of `h`, printed (for a failing test's output).
    pub(crate) fn violations(h: &History) -> Vec<Violation> {
        let v = check_all(h);
        for x in &v {
            println!("{x}");
        }
        v
    }

    /// Asserts `h` violates exactly the property `prop` (no other) and returns those violations.
    pub(crate) fn only(h: &History, prop: &str) -> Vec<Violation> {
        let v = violations(h);
        assert!(!v.is_empty(), "expected a {prop} violation, got none");
        for x in &v {
            assert_eq!(x.property, prop, "unexpected violation: {x}");
        }
        v
    }

    /// Asserts `h` violates `prop` (others may fire too) and returns its violations.
    pub(crate) fn has(h: &History, prop: &str) -> Vec<Violation> {
        let v: Vec<_> = violations(h)
            .into_iter()
            .filter(|x| x.property == prop)
            .collect();
        assert!(!v.is_empty(), "expected a {prop} violation, got none");
        v
    }

    /// Asserts `h` passes every checker.
    pub(crate) fn clean(h: &History) {
        let v = violations(h);
        assert!(
            v.is_empty(),
            "expected no violations, got {}: first {}",
            v.len(),
            v[0]
        );
    }

    /// Asserts some violation names exactly `procs` (in order) and `msg`.
    pub(crate) fn names(v: &[Violation], procs: &[u32], m: Option<(u32, u64)>) {
        let procs: Vec<ProcId> = procs.iter().map(|&n| p(n)).collect();
        let m = m.map(|(s, n)| msg(s, n));
        assert!(
            v.iter().any(|x| x.procs == procs && x.msg == m),
            "no violation names procs {procs:?} and msg {m:?}: {v:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;

    /// Two rings {1,2} and {3,4} merge into {1,2,3,4}; then 4 crashes and 1,2,3 move on through
    /// a transitional view; safe, agreed, causal, fifo, reliable and unreliable traffic.
    pub(crate) fn good() -> B {
        let mut b = B::new();
        b.reg_all(1, &[1, 2]).reg_all(2, &[3, 4]);
        b.bcast(1, 0, Agreed, &[1, 2]);
        b.bcast(3, 0, Safe, &[3, 4]);
        b.send(2, 0, Causal);
        // 2's message is only delivered in the transitional view (by both 1 and 2).
        b.trans_all(5, &[1, 2]).deliver_all(&[1, 2], (2, 0), Causal);
        b.trans_all(5, &[3, 4]);
        b.reg_all(5, &[1, 2, 3, 4]);
        b.bcast(4, 0, Safe, &[1, 2, 3, 4]);
        b.bcast(1, 1, Fifo, &[1, 2, 3, 4]);
        b.send(2, 1, Unreliable); // lost: fine
        b.send(3, 1, Reliable).send(3, 2, Agreed);
        b.deliver_all(&[1, 2, 3, 4], (3, 1), Reliable);
        b.deliver_all(&[1, 2, 3, 4], (3, 2), Agreed);
        b.crash(4);
        // 4 crashed: 3's safe message in the transitional view only needs {1,2,3}.
        b.send(3, 3, Safe);
        b.trans_all(6, &[1, 2, 3]);
        b.deliver_all(&[1, 2, 3], (3, 3), Safe);
        b.reg_all(6, &[1, 2, 3]);
        b.calm();
        b.bcast(2, 2, Causal, &[1, 2, 3]);
        b.bcast(1, 2, Safe, &[1, 2, 3]);
        b
    }

    #[test]
    fn good_history_is_clean() {
        clean(&good().build());
    }

    #[test]
    fn empty_history_is_clean() {
        clean(&History::default());
        clean(&B::new().calm().build());
    }

    /// A history breaking many properties at once.
    fn messy() -> History {
        let mut b = good();
        b.deliver(5, (1, 9), Safe); // before any view, never sent
        b.reg(5, 9, &[1, 5]).reg(5, 8, &[5]);
        b.send(2, 3, Agreed)
            .send(2, 4, Agreed)
            .deliver(3, (2, 4), Agreed);
        b.deliver(3, (2, 3), Agreed).deliver(3, (2, 3), Agreed);
        b.build()
    }

    #[test]
    fn standalone_checks_match_check_all() {
        for h in [good().build(), messy()] {
            let all = check_all(&h);
            let mut joined = Vec::new();
            for (name, check) in CHECKERS {
                let mut mine = Vec::new();
                check(&h, &mut mine);
                assert!(mine.iter().all(|v| v.property == name));
                joined.extend(mine);
            }
            assert_eq!(joined, all);
        }
        let v = check_all(&messy());
        let props: std::collections::BTreeSet<_> = v.iter().map(|v| v.property).collect();
        println!("{props:?}");
        assert!(props.len() >= 6, "{props:?}");
    }

    #[test]
    fn display_names_everything() {
        let v = Violation {
            property: "agreed_order",
            procs: vec![p(1), p(2)],
            msg: Some(msg(3, 4)),
            detail: "boom".into(),
        };
        assert_eq!(
            v.to_string(),
            "agreed_order: procs [n1.0, n2.0] msg n3.0#4: boom"
        );
    }

    #[test]
    fn violations_are_capped() {
        let mut b = B::new();
        b.reg_all(1, &[1]);
        b.send(1, 0, Reliable);
        for _ in 0..50 {
            b.deliver(1, (1, 0), Reliable);
        }
        let v = only(&b.build(), "no_duplicate_delivery");
        assert_eq!(v.len(), CAP + 1);
        assert!(v[CAP].detail.contains("29 more"));
    }

    #[test]
    fn check_all_is_fast_on_a_big_history() {
        // 12 processes, one ring, 8k agreed/causal messages each delivered by all: ~100k events.
        let all: Vec<u32> = (1..=12).collect();
        let mut b = B::new();
        b.reg_all(1, &all);
        for i in 0..8000u64 {
            let s = all[(i % 12) as usize];
            let svc = if i % 2 == 0 { Agreed } else { Causal };
            b.bcast(s, i / 12, svc, &all);
        }
        b.calm();
        let h = b.build();
        let events: usize = h.procs.values().map(Vec::len).sum();
        assert!(events > 100_000);
        #[allow(clippy::disallowed_methods)]
        let start = std::time::Instant::now();
        assert!(check_all(&h).is_empty());
        let took = start.elapsed();
        println!("check_all on {events} events: {took:?}");
        // Generous bound for unoptimised test builds on a shared machine.
        assert!(took.as_millis() < 2000, "too slow: {took:?}");
    }
}
