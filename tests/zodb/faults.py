"""Stock ZODB clients through server faults, against real server processes.

A multi-threaded ZODB workload over `ZEO.ClientStorage` (given the three writable ZEO
addresses: only the primary listens there) runs while the primary is killed with -9, the
killed server is restarted on its data directory and rejoins, the primary is swapped back
to it (`standby switchover --to ID`) and, in the network-namespace test, the primary is cut
from the other servers while the clients still reach it. At the end a fresh ClientStorage
reads back every acknowledged write.

What is checked:
* every transaction whose commit returned is there, with its value (lost = 0);
* the application sees only retryable errors (`transaction.interfaces.TransientError`:
  ConflictError and its kinds, ClientDisconnected), retried by
  `transaction.manager.attempts()`; any other error fails the test;
* writes flow again after each fault within a bound, and every worker thread ends;
* each worker's counter (a `BTrees.Length`, +1 per transaction of that worker) is at least
  its number of acknowledged transactions and exceeds it by no more than its transactions
  whose outcome the client could not know (an error after which a retry may have committed
  the transaction a second time);
* netns only: after the partition heals, the old primary rejoins and every server's
  read-only address serves every acknowledged write.

Printed: the write gap of each fault (from the fault to the end of the longest stretch
without an acknowledged commit after it), commits, retryable errors by class and by phase,
and the read-back figures.

`FailoverTests` runs on loopback (no root needed); `NetnsFailoverTests` runs the servers in
nodes 1-3 of a netns-cluster network and the clients in node 4 (root; skipped with the
reason otherwise).
"""

import collections
import logging
import os
import random
import signal
import sys
import threading
import time
import traceback
import unittest

import transaction
import ZODB
from BTrees.Length import Length
from BTrees.OOBTree import OOBTree
from transaction.interfaces import TransientError
from ZEO.ClientStorage import ClientStorage
from ZEO.Exceptions import ClientDisconnected
from ZODB.POSException import ConflictError

import base
import cluster

# Bounds (seconds).
WAIT_TIMEOUT = 30.0        # ClientStorage: how long a call waits for a connection
FAILOVER_TIMEOUT = 30.0    # a new primary, and commits flowing again, after a fault
REJOIN_TIMEOUT = 60.0      # a restarted or healed server is a caught-up backup again
STOP_TIMEOUT = 30.0        # workers end after being told to
WARM_UP_ACKS = 30
FLOWING_ACKS = 10          # "commits flow again": this many acknowledged after the new primary
STEADY = 3.0               # seconds of workload between faults
ATTEMPTS = 100000          # attempts() bound; the real bound is time (the phases' timeouts)
DISCONNECTED_BACKOFF = 0.05


def standby_only():
    """The skip reason when these tests cannot run against the chosen backend."""
    if os.environ.get("STANDBY_ZEO_BACKEND", "standby") != "standby":
        return "fault tests need Standby servers (STANDBY_ZEO_BACKEND=standby)"
    return None


def zeo_logging(on):
    """ZEO's INFO lines (connects, refusals, registrations, cache verification) into the
    runner's client log while fault tests run: what a client did during a fault."""
    logging.getLogger("ZEO").setLevel(logging.INFO if on else logging.NOTSET)


def say(line=""):
    print(f"    {line}", flush=True)


# ---------------------------------------------------------------------------
# The workload


class _CountingTransactionManager(transaction.TransactionManager):
    """The stock thread-local-free TransactionManager, telling the workload about every
    error `attempts()` weighs (retry or not), and backing off a little before a retry
    (a disconnected ClientStorage fails tpc_begin at once: without a pause the retries
    would spin through the failover)."""

    def __init__(self, workload, worker):
        super().__init__(explicit=False)
        self._workload = workload
        self._worker = worker
        self._random = random.Random(worker)

    def _retryable(self, error_type, error):
        retry = super()._retryable(error_type, error)
        self._workload.count_error(self._worker, error, retry)
        if not retry or self._workload.stopping.is_set():
            return False
        if isinstance(error, ClientDisconnected):
            time.sleep(DISCONNECTED_BACKOFF)
        else:
            time.sleep(self._random.uniform(0, 0.005))
        return True


class Workload:
    """`clients` ClientStorages (each with its ZODB.DB), `threads` worker threads on each.

    Every transaction of worker w writes, into one shared OOBTree, its own key
    `wWW-NNNNNN` (a new one per acknowledged transaction; the tree's buckets change under
    every worker, and BTrees' conflict resolution merges their concurrent inserts on the
    client), in one transaction of HOT_EVERY also one of a few hot keys shared by every
    worker (real conflicts: BTrees cannot merge two changes of one key, so the client gets
    ConflictError and attempts() retries), and adds 1 to its own counter (a `Length`).
    A write is recorded as acknowledged once `attempts()` ended without an exception, i.e.
    once `tpc_finish` returned.

    Contention is kept below what a stock ClientStorage can take: it resolves conflicts
    and votes again at most 9 times, then calls tpc_finish anyway, which fails with a
    non-retryable error (Standby: StorageTransactionError "tpc_finish before a successful
    vote"; stock ZEO: AssertionError "finished called wo lock"). A counter shared by every
    transaction, or every transaction on one bucket, reaches that limit now and then
    without any fault; so the counters are per worker, the tree is padded so that the
    workers' keys start in different buckets, and the hot keys are written by a quarter of
    the transactions.

    Open it from the thread (and network namespace) the clients must live in.
    """

    HOT_EVERY = 4
    PAD = 40  # keys per worker written at setup, after the worker's own keys

    def __init__(self, addrs, clients=2, threads=2, hot_keys=4):
        self.addrs = list(addrs)
        self.clients = clients
        self.threads_per_client = threads
        self.hot_keys = hot_keys
        self.lock = threading.Lock()
        self.acks = []             # (monotonic time, worker, key, value), in time order
        self.errors = collections.Counter()        # class name -> retried errors
        self.error_events = []     # (monotonic time, class name, retried)
        self.samples = {}          # class name -> one message
        self.unknown_outcome = collections.Counter()  # worker -> retried errors after
        #                            which its transaction may have committed
        self.fatal = []            # (worker, text): errors the application could not retry
        self.abandoned = 0         # transactions left unfinished when told to stop
        self.stopping = threading.Event()
        self.storages = []
        self.dbs = []
        self.workers = []

    @property
    def size(self):
        return self.clients * self.threads_per_client

    def open(self):
        for _ in range(self.clients):
            st = ClientStorage(self.addrs, base.STORAGE_NAME, wait=True,
                               wait_timeout=WAIT_TIMEOUT)
            self.storages.append(st)
            self.dbs.append(ZODB.DB(st))
        tm = transaction.TransactionManager(explicit=False)
        conn = self.dbs[0].open(transaction_manager=tm)
        try:
            for attempt in tm.attempts(10):
                with attempt:
                    root = conn.root()
                    if "tree" not in root:
                        tree = root["tree"] = OOBTree()
                        counts = root["counts"] = OOBTree()
                        for w in range(self.size):
                            counts[w] = Length()
                            for j in range(self.PAD):
                                tree[f"w{w:02d}-pad-{j:03d}"] = ""
        finally:
            tm.abort()
            conn.close()
        # The other clients learn of that commit by an invalidation that may still be on
        # its way (ZEO promises read-your-writes to the committing client only).
        for db in self.dbs[1:]:
            tm = transaction.TransactionManager(explicit=False)
            conn = db.open(transaction_manager=tm)
            try:
                deadline = time.monotonic() + WAIT_TIMEOUT
                while "tree" not in conn.root():
                    if time.monotonic() > deadline:
                        raise AssertionError("a second client does not see the workload's "
                                             f"tree {WAIT_TIMEOUT:.0f} s after its commit")
                    time.sleep(0.01)
                    tm.begin()
            finally:
                tm.abort()
                conn.close()
        return self

    def start(self):
        w = 0
        for db in self.dbs:
            for _ in range(self.threads_per_client):
                t = threading.Thread(target=self._worker, args=(w, db),
                                     name=f"worker-{w}", daemon=True)
                self.workers.append(t)
                w += 1
        for t in self.workers:
            t.start()
        return self

    def count_error(self, worker, error, retried):
        name = type(error).__name__
        now = time.monotonic()
        with self.lock:
            self.error_events.append((now, name, retried))
            if retried:
                self.errors[name] += 1
                self.samples.setdefault(name, str(error)[:200])
                if not isinstance(error, ConflictError):
                    # A disconnection (or any other retried error) may strike after the
                    # server committed: the retry may commit the transaction again.
                    self.unknown_outcome[worker] += 1

    def _worker(self, w, db):
        tm = _CountingTransactionManager(self, w)
        rnd = random.Random(1000 + w)
        conn = db.open(transaction_manager=tm)
        i = 0
        try:
            while not self.stopping.is_set():
                key = f"w{w:02d}-{i:06d}"
                value = f"{w}:{i}:{rnd.getrandbits(32):08x}"
                hot = (f"hot-{rnd.randrange(self.hot_keys)}"
                       if rnd.randrange(self.HOT_EVERY) == 0 else None)
                try:
                    for attempt in tm.attempts(ATTEMPTS):
                        with attempt:
                            root = conn.root()
                            tree = root["tree"]
                            tree[key] = value
                            if hot is not None:
                                tree[hot] = key
                            root["counts"][w].change(1)
                except Exception as e:  # noqa: BLE001 - sorted out right here
                    tm.abort()
                    if isinstance(e, TransientError) and self.stopping.is_set():
                        with self.lock:
                            self.abandoned += 1
                        break
                    with self.lock:
                        self.fatal.append((w, "".join(
                            traceback.format_exception(type(e), e, e.__traceback__))))
                    i += 1  # the outcome of this key is unknown: do not reuse it
                    time.sleep(0.1)
                    continue
                now = time.monotonic()
                with self.lock:
                    self.acks.append((now, w, key, value))
                i += 1
        except BaseException:  # noqa: BLE001 - a worker must not die silently
            with self.lock:
                self.fatal.append((w, "worker died:\n" + traceback.format_exc()))
        finally:
            try:
                tm.abort()
                conn.close()
            except Exception:  # noqa: BLE001 - closing after a failure
                pass

    # -- what it measured

    def ack_times(self, after):
        with self.lock:
            return [a[0] for a in self.acks if a[0] > after]

    def acked(self):
        with self.lock:
            return len(self.acks)

    def wait_acks(self, after, n, timeout, every_worker=False):
        """Waits until n writes were acknowledged after monotonic time `after` (and, with
        every_worker, at least one by each worker)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                recent = [a for a in self.acks if a[0] > after]
            if len(recent) >= n and (not every_worker
                                     or len({a[1] for a in recent}) == self.size):
                return True
            if time.monotonic() > deadline or self.fatal:
                return False
            time.sleep(0.02)

    def silent_workers(self, after):
        with self.lock:
            busy = {a[1] for a in self.acks if a[0] > after}
        return sorted(set(range(self.size)) - busy)

    def gap(self, start, end=None):
        """The write gap of a fault at `start`: the longest stretch in [start, end]
        without an acknowledged commit, starting at `start` or at an ack, ended by an ack.
        None when no commit was acknowledged after `start`."""
        times = [t for t in self.ack_times(start) if end is None or t <= end]
        if not times:
            return None
        edges = [start] + times
        return max(b - a for a, b in zip(edges, edges[1:]))

    def errors_between(self, start, end):
        c = collections.Counter()
        with self.lock:
            for t, name, retried in self.error_events:
                if start <= t < end:
                    c[name if retried else f"{name} (not retried)"] += 1
        return c

    def stop(self, timeout=STOP_TIMEOUT):
        """Tells the workers to stop and waits for them; returns the stacks of those still
        running after `timeout` (empty when all ended)."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for t in self.workers:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t for t in self.workers if t.is_alive()]
        frames = sys._current_frames()
        return [f"{t.name}:\n" + "".join(traceback.format_stack(frames[t.ident]))
                for t in stuck if t.ident in frames]

    def close(self):
        for db in self.dbs:
            try:
                db.close()
            except Exception as e:  # noqa: BLE001 - closing after a failure
                print(f"faults: closing a DB: {e}", file=sys.stderr)
        self.dbs = []


def client_state(storage, backend=None):
    """What a ClientStorage is doing, for failure messages: connected, or which addresses
    it still tries to reach and which it gave up on (read from ZEO's internals; only
    here, only for the message). With `backend`, says which server's writable address
    answers now."""
    try:
        if storage.is_connected():
            return "connected"
        io = storage._server.client
        trying = [tuple(p.addr) for p in io.protocols if not p.closed]
        gave_up = [tuple(a) for a in io.addrs if tuple(a) not in trying]
        text = f"disconnected; still trying {trying}; not trying {gave_up}"
    except Exception as e:  # noqa: BLE001 - a message, whatever ZEO's internals hold
        return f"disconnected ({type(e).__name__}: {e})"
    if backend is not None:
        listening = [backend.address(i, "zeo") for i in backend.primaries()]
        stranded = [a for a in listening if a in gave_up]
        if stranded:
            text += (
                f". STRANDED: {stranded} accepts ZEO now, but this client no longer tries "
                "it: a connection to that address was accepted and then lost before it "
                "registered, and a stock ClientStorage does not try such an address again "
                "while its other addresses are still being tried (they refuse: not "
                "primary). See the clients' log (connection_made then connection_lost at "
                "the primary's role change) and PROTOCOL.md section 9")
    return text


def explain(text):
    """A note on errors whose cause is known, for failure messages."""
    if "tpc_finish before a successful vote" in text:
        return ("(a stock ClientStorage resolves conflicts and votes again at most 9 times, "
                "then calls tpc_finish anyway: every vote of this transaction returned "
                "conflicts; stock ZEO fails that tpc_finish too, with AssertionError)\n")
    return ""


def format_counter(c):
    return ", ".join(f"{k} {v}" for k, v in c.most_common()) or "none"


def read_back(addrs, acks, read_only=False, timeout=WAIT_TIMEOUT):
    """Opens a fresh ClientStorage on addrs and checks every acknowledged (key, value).
    Returns (lost keys, wrong keys, {worker: counter}, entries in the tree)."""
    st = ClientStorage(list(addrs), base.STORAGE_NAME, wait=True, wait_timeout=timeout,
                       read_only=read_only)
    db = ZODB.DB(st)
    try:
        tm = transaction.TransactionManager(explicit=False)
        conn = db.open(transaction_manager=tm)
        try:
            root = conn.root()
            tree = root["tree"]
            lost, wrong = [], []
            for _, _, key, value in acks:
                got = tree.get(key)
                if got is None:
                    lost.append(key)
                elif got != value:
                    wrong.append((key, value, got))
            counts = {w: c() for w, c in root["counts"].items()}
            return lost, wrong, counts, len(tree)
        finally:
            tm.abort()
            conn.close()
    finally:
        db.close()


# ---------------------------------------------------------------------------
# The tests


class _FaultTestBase(unittest.TestCase):
    """A FaultCluster (or NetnsCluster) and a Workload per test; the servers' logs are
    kept by the runner when the test fails (self.cluster)."""

    cluster = None
    workload = None

    @classmethod
    def setUpClass(cls):
        # The storage suite's pool keeps a spare cluster running; it would only take CPU
        # from these timing-sensitive tests. base.pool() makes a new pool if needed.
        base.close_pool()
        zeo_logging(True)

    @classmethod
    def tearDownClass(cls):
        zeo_logging(False)

    def setUp(self):
        reason = standby_only()
        if reason:
            self.skipTest(reason)
        self.phases = []     # (name, start, end) for errors by phase
        self.figures = []    # lines printed at the end
        self.started = time.monotonic()

    def tearDown(self):
        try:
            if self.workload is not None:
                self.workload.stop(timeout=10.0)
                self.workload.close()
        finally:
            if self.cluster is not None:
                self.cluster.stop()

    # -- helpers

    def make_cluster(self):
        return cluster.FaultCluster(cluster.session(), _bin_dir())

    def start_cluster(self):
        self.cluster = self.make_cluster()
        self.cluster.start()
        self.cluster.wait_ready()
        return self.cluster

    def fail_with_state(self, msg):
        c, wl = self.cluster, self.workload
        state = [msg, f"servers: {c.roles()}"]
        if wl is not None:
            state.append(f"acknowledged {wl.acked()}; retried errors: "
                         f"{format_counter(wl.errors)}")
            state += [f"workload ClientStorage {k}: {client_state(st, c)}"
                      for k, st in enumerate(wl.storages)]
            state += [f"non-retryable error in worker {w}:\n{t}{explain(t)}"
                      for w, t in wl.fatal[:3]]
        state.append(c.log_tails(60))
        self.fail("\n".join(state))

    def wait_flowing(self, since, what):
        """Waits until FLOWING_ACKS commits were acknowledged after `since`, and one by
        every worker (each ClientStorage must have found the primary)."""
        wl = self.workload
        if not wl.wait_acks(since, FLOWING_ACKS, FAILOVER_TIMEOUT, every_worker=True):
            self.fail_with_state(
                f"{what}: {len(wl.ack_times(since))} commits acknowledged in "
                f"{FAILOVER_TIMEOUT:.0f} s; workers without any: "
                f"{wl.silent_workers(since)} (worker w uses ClientStorage "
                f"w // {wl.threads_per_client})")

    def figure(self, line):
        """Prints a measured figure at once (a later failure keeps it visible)."""
        if not self.figures:
            wl = self.workload
            say(f"{type(self).__name__}.{self._testMethodName}: {wl.size} workers "
                f"({wl.clients} ClientStorages x {wl.threads_per_client} threads)")
        self.figures.append(line)
        say(f"  {line}")

    def phase(self, name, start):
        end = time.monotonic()
        self.phases.append((name, start, end))
        return end

    def steady(self):
        time.sleep(STEADY)

    def kill_restart_swap(self):
        """Under the workload: kill -9 the primary, restart it, swap the primary back to it,
        with a steady stretch after each."""
        old, _ = self.kill_primary()
        self.steady()
        self.restart(old)
        self.steady()
        self.swap_to(old)
        self.steady()
        return old

    def warm_up(self):
        t = time.monotonic()
        if not self.workload.wait_acks(0.0, WARM_UP_ACKS, FAILOVER_TIMEOUT):
            self.fail_with_state(f"workload: fewer than {WARM_UP_ACKS} commits in "
                                 f"{FAILOVER_TIMEOUT:.0f} s before any fault")
        self.phase("warm-up", t)

    # -- the faults

    def kill_primary(self):
        c, wl = self.cluster, self.workload
        p = c.primary
        t = time.monotonic()
        c.kill_server(p, signal.SIGKILL)
        try:
            new = c.wait_primary(FAILOVER_TIMEOUT, other_than=p, describe=" after kill -9")
        except cluster.ClusterError as e:
            self.fail_with_state(str(e))
        t_new = time.monotonic()
        self.wait_flowing(t_new, f"after kill -9 of {c.name(p)}")
        gap = wl.gap(t)
        self.phase(f"kill -9 {c.name(p)}", t)
        self.figure(
            f"kill -9 {c.name(p)} (primary): {c.name(new)} primary after {t_new - t:.2f} s; "
            f"write gap {gap:.2f} s")
        return p, new

    def restart(self, i):
        c, wl = self.cluster, self.workload
        t = time.monotonic()
        c.restart_server(i)
        try:
            c.wait_probe(i, "/replica", REJOIN_TIMEOUT, describe=" after its restart")
        except cluster.ClusterError as e:
            self.fail_with_state(str(e))
        t_back = time.monotonic()
        self.wait_flowing(t_back, f"after {c.name(i)} rejoined")
        end = self.phase(f"restart {c.name(i)}", t)
        self.figure(
            f"restart {c.name(i)} (same data dir): caught-up backup (/replica 200) after "
            f"{t_back - t:.2f} s; longest pause in commits meanwhile {wl.gap(t):.2f} s"
            + self.disconnections_note(t, end))

    def disconnections_note(self, start, end):
        """For a fault that leaves the primary where it was: how many times the clients
        were disconnected meanwhile (a view change makes the primary pass through
        Syncing, and the ZEO face closes its writable address and connections)."""
        n = self.workload.errors_between(start, end)["ClientDisconnected"]
        if not n:
            return ""
        return (f"; the primary stayed {self.cluster.name(self.cluster.primary)}, yet the "
                f"clients saw ClientDisconnected {n} times")

    def swap_to(self, i):
        c, wl = self.cluster, self.workload
        t = time.monotonic()
        r = c.cli("switchover", "--to", str(c.servers[i]["id"]))
        t_cmd = time.monotonic()
        if r.returncode != 0:
            self.fail_with_state(f"standby switchover --to {i} failed ({r.returncode}): "
                                 f"{r.stdout}{r.stderr}")
        try:
            new = c.wait_primary(FAILOVER_TIMEOUT, describe=" after the switchover")
        except cluster.ClusterError as e:
            self.fail_with_state(str(e))
        self.assertEqual(new, i, f"after switchover --to {i}: {c.roles()}")
        t_new = time.monotonic()
        self.wait_flowing(t_new, f"after switchover to {c.name(i)}")
        gap = wl.gap(t)
        self.phase(f"switchover to {c.name(i)}", t)
        self.figure(
            f"switchover --to {i}: command {t_cmd - t:.2f} s ({r.stdout.strip()}); "
            f"{c.name(i)} serves ZEO after {t_new - t:.2f} s; write gap {gap:.2f} s")

    # -- the end

    def finish(self, read_only_checks=()):
        """Stops the workload, reads every acknowledged write back through a fresh
        client (and through each of `read_only_checks`: (label, addrs)), prints the
        figures and fails on any lost or wrong write or non-retryable error."""
        wl, c = self.workload, self.cluster
        t = time.monotonic()
        stuck = wl.stop()
        elapsed = time.monotonic() - self.started
        if stuck:
            self.fail_with_state(f"{len(stuck)} worker(s) still running {STOP_TIMEOUT:.0f} s "
                                 "after being told to stop:\n" + "\n".join(stuck))
        acks = list(wl.acks)
        lost, wrong, count, entries = read_back(c.writable_addresses, acks)
        self.phase("stop, read back", t)
        # The read-back must see a bad history: a write never made, and one with another value.
        if acks:
            t0, w0, k0, v0 = acks[0]
            fake = [(t0, w0, "never-committed", "x"), (t0, w0, k0, v0 + "-not-this")]
            fl, fw, _, _ = read_back(c.writable_addresses, fake)
            self.assertEqual((fl, [k for k, _, _ in fw]), (["never-committed"], [k0]),
                             "the read-back check misses a lost or a wrong write")

        keys = [a[2] for a in acks]
        self.assertEqual(len(keys), len(set(keys)), "a key was acknowledged twice")
        say(f"  {elapsed:.1f} s; commits acknowledged {len(acks)}; retryable errors (retried): "
            f"{format_counter(wl.errors)}; non-retryable {len(wl.fatal)}; "
            f"left unfinished at stop {wl.abandoned}")
        for name, start, end in self.phases:
            say(f"    {name:<28} {end - start:6.2f} s  commits "
                f"{len([x for x in acks if start <= x[0] < end]):5}  errors "
                f"{format_counter(wl.errors_between(start, end))}")
        acked_by = collections.Counter(a[1] for a in acks)
        total, unknown = sum(count.values()), sum(wl.unknown_outcome.values())
        say(f"  read back by a fresh ClientStorage: {len(acks) - len(lost) - len(wrong)} of "
            f"{len(acks)} acknowledged writes; lost {len(lost)}, wrong value {len(wrong)}; "
            f"workers' counters sum {total} (acknowledged {len(acks)}, outcome unknown to "
            f"the client <= {unknown}); {entries} keys in the tree")
        for label, addrs in read_only_checks:
            # A backup applies what the primary acknowledged a moment later: retry briefly.
            deadline = time.monotonic() + 10.0
            while True:
                rl, rw, rc, _ = read_back(addrs, acks, read_only=True)
                if (rl, rw, rc) == ([], [], count) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            say(f"  read back read-only from {label}: lost {len(rl)}, wrong {len(rw)}, "
                f"counters {'equal to' if rc == count else 'DIFFERENT from'} the primary's")
            self.assertEqual((rl[:5], rw[:5], rc), ([], [], count),
                             f"{label} differs from the primary")

        counters = {}
        for i in range(c.size):
            counters[c.name(i)] = {k: c.metric(i, f"standby_zeo_{k}_total")
                                   for k in ("commits", "conflicts", "stranded", "bad_input")}
        say("  servers' ZEO counters (since their last start): " + "; ".join(
            f"{n} " + ", ".join(f"{k} {v:.0f}" for k, v in m.items() if v is not None)
            for n, m in counters.items()))

        self.assertEqual(wl.fatal, [], "the application saw non-retryable errors:\n"
                         + "\n".join(f"worker {w}: {t}{explain(t)}" for w, t in wl.fatal[:5]))
        self.assertEqual(lost, [], f"{len(lost)} acknowledged write(s) lost, e.g. {lost[:10]}")
        self.assertEqual(wrong, [], f"{len(wrong)} acknowledged write(s) with another value, "
                         f"e.g. {wrong[:5]}")
        for w in range(wl.size):
            self.assertGreaterEqual(
                count.get(w, 0), acked_by[w],
                f"worker {w}'s counter is below its number of acknowledged commits")
            self.assertLessEqual(
                count.get(w, 0), acked_by[w] + wl.unknown_outcome[w],
                f"worker {w}'s counter {count.get(w, 0)} counts more commits than it had "
                f"acknowledged ({acked_by[w]}) plus those of unknown outcome "
                f"({wl.unknown_outcome[w]}): a transaction was committed twice")
        for n, m in counters.items():
            # Read from /metrics: None (no answer, no such line) must not pass for zero.
            self.assertEqual(m["stranded"], 0, f"{n}: ZEO clients stranded (cache newer "
                             "than the server: a client saw a tid the server does not have)")
            self.assertEqual(m["bad_input"], 0, f"{n}: ZEO connections closed for bad input")


def _bin_dir():
    from pathlib import Path

    return Path(cluster.default_bin_dir()).resolve()


# Longer than a primary that lost its view keeps serving its writable clients while the
# servers elect again (STEP_DOWN_GRACE in server/src/zeo/dispatch.rs, 3 s).
QUORUM_LOSS = 4.5


class FailoverTests(_FaultTestBase):
    """On loopback: kill -9 the primary, restart it, swap the primary back to it; and a
    loss of quorum."""

    def test_kill_restart_swap(self):
        c = self.start_cluster()
        self.workload = Workload(c.writable_addresses).open().start()
        self.warm_up()
        self.kill_restart_swap()
        self.finish()

    def test_quorum_loss_and_return(self):
        """Both backups are killed (-9): the primary alone cannot commit; after its grace
        it sends its writable clients away and closes its writable address. The backups
        come back: a primary is elected (usually the same server) and every client must
        find it again by itself."""
        c = self.start_cluster()
        self.workload = Workload(c.writable_addresses).open().start()
        wl = self.workload
        self.warm_up()
        p = c.primary
        backups = [i for i in range(c.size) if i != p]
        t = time.monotonic()
        for b in backups:
            c.kill_server(b, signal.SIGKILL)
        closed = None
        while time.monotonic() - t < QUORUM_LOSS:
            if closed is None and not c.zeo_accepts(p):
                closed = time.monotonic() - t
            time.sleep(0.05)
        during = len(wl.ack_times(t + 0.5))
        t_back = time.monotonic()
        for b in backups:
            c.restart_server(b)
        try:
            new = c.wait_primary(FAILOVER_TIMEOUT, describe=" after the backups' restart")
        except cluster.ClusterError as e:
            self.fail_with_state(str(e))
        t_new = time.monotonic()
        self.wait_flowing(t_new, f"after quorum returned ({c.name(new)} primary)")
        self.phase(f"kill -9 {', '.join(c.name(b) for b in backups)}, restart", t)
        if closed is None:
            self.fail_with_state(f"{c.name(p)}, alone, still accepted on its writable address "
                                 f"{QUORUM_LOSS} s after losing its quorum")
        closed_text = f"closed its writable address after {closed:.2f} s"
        self.figure(
            f"kill -9 both backups ({', '.join(c.name(b) for b in backups)}) for "
            f"{QUORUM_LOSS} s: primary {c.name(p)} {closed_text}; commits acknowledged "
            f"during the loss (after 0.5 s) {during}; restarted: {c.name(new)} primary after "
            f"{t_new - t_back:.2f} s; every worker committing again; write gap "
            f"{wl.gap(t):.2f} s")
        self.assertEqual(during, 0, "commits acknowledged without a majority")
        self.steady()
        self.finish()


class NetnsFailoverTests(cluster.NetnsNodesMixin, _FaultTestBase):
    """The same faults, then a partition: servers in nodes 1-3 of a netns-cluster network,
    the workload in node 4; after the swap back, the primary's node is cut from the other
    servers' nodes (not from the clients'): it must give up its primary role and close its
    writable address and connections so that the clients move to the new primary."""


    def partition_primary(self):
        c, wl, nodes = self.cluster, self.workload, self.nodes
        p = c.primary
        others = [i for i in range(c.size) if i != p]
        spec = f"{c.node(p)}|{','.join(str(c.node(i)) for i in others)}"
        t = time.monotonic()
        nodes.partition(spec)
        # The old primary must close its writable address (its clients must move), and
        # one of the others must become primary and listen on its own.
        deadline = t + FAILOVER_TIMEOUT
        t_closed = t_other = None
        while t_closed is None or t_other is None:
            now = time.monotonic()
            if t_closed is None and not c.zeo_accepts(p):
                t_closed = now
            if t_other is None and any(c.zeo_accepts(i) and c.probe(i, "/primary") == 200
                                       for i in others):
                t_other = now
            if now > deadline:
                self.fail_with_state(
                    f"partition {spec}: {FAILOVER_TIMEOUT:.0f} s later, {c.name(p)} "
                    f"{'still accepts' if t_closed is None else 'no longer accepts'} on "
                    f"its writable ZEO address, and "
                    f"{'no other server' if t_other is None else 'another server'} does")
            time.sleep(0.05)
        try:
            new = c.wait_primary(FAILOVER_TIMEOUT, other_than=p,
                                 describe=f" after partition {spec}")
        except cluster.ClusterError as e:
            self.fail_with_state(str(e))
        t_new = time.monotonic()
        self.wait_flowing(t_new, f"after partition {spec}")
        gap = wl.gap(t)
        self.phase(f"partition {c.name(p)}|others", t)
        self.figure(
            f"partition node {spec} ({c.name(p)} primary, cut from "
            f"{', '.join(c.name(i) for i in others)}; the clients reach all): "
            f"{c.name(new)} primary and listening after {t_other - t:.2f} s, "
            f"{c.name(p)} closed its writable address after {t_closed - t:.2f} s; "
            f"write gap {gap:.2f} s")
        return p, new

    def heal(self, old):
        c, wl = self.cluster, self.workload
        t = time.monotonic()
        self.nodes.heal()
        try:
            for i in [old] + [i for i in range(c.size) if i not in (old, c.primary)]:
                c.wait_probe(i, "/replica", REJOIN_TIMEOUT, describe=" after heal")
        except cluster.ClusterError as e:
            self.fail_with_state(str(e))
        t_back = time.monotonic()
        self.wait_flowing(t_back, f"after heal, {c.name(old)} rejoined")
        end = self.phase("heal", t)
        self.figure(
            f"heal: {c.name(old)} caught-up backup again after {t_back - t:.2f} s; "
            f"longest pause in commits meanwhile {wl.gap(t):.2f} s"
            + self.disconnections_note(t, end))

    def test_kill_restart_swap_partition(self):
        c = self.start_cluster()
        self.workload = Workload(c.writable_addresses).open().start()
        self.warm_up()
        self.kill_restart_swap()
        cut, _ = self.partition_primary()
        self.steady()
        self.heal(cut)
        self.steady()
        # Read back from the primary and, read-only, from every server (the healed one
        # included).
        self.finish(read_only_checks=[
            (f"{c.name(i)} zeo_read_only", [c.address(i, "zeo_read_only")])
            for i in range(c.size)])


CASES = [FailoverTests, NetnsFailoverTests]


def load_tests(loader, standard_tests, pattern):
    suite = unittest.TestSuite()
    for case in CASES:
        suite.addTests(loader.loadTestsFromTestCase(case))
    return suite


if __name__ == "__main__":
    unittest.main()
