"""Read-only ZEO clients of a backup: invalidations, read-only fallback, partitions.

* `ReadOnlyClientTests.test_invalidations` (loopback): a `read_only=True` ClientStorage
  given one backup's `zeo_read_only` address only sees every commit of a writable client
  through invalidations: a Connection opened before the commits sees each new value after
  `transaction.begin()` (or `conn.sync()`), on the same connection to the server (the
  backup counts no new ZEO connection), and its own commit fails with ReadOnlyError.
* `ReadOnlyClientTests.test_fallback_follows_switchover` (loopback): a
  `read_only_fallback=True` client given a backup's two addresses (its writable one
  refuses: it is not the primary) lands read-only on the read-only address, reads and
  sees invalidations, cannot commit; after `standby switchover --to` that backup it
  upgrades to the now-listening writable address by itself and commits.
* `NetnsReadOnlyTests.test_partitioned_backup_keeps_serving` (netns, root): the backup's
  node is cut from the primary's and the third server's nodes while the read-only
  clients (node 4) still reach it. They keep reading its last state (objects never loaded
  before included) without reconnecting while the writer commits on; after the heal the
  backup catches up and the same connections see the newer commits.
"""

import time
import unittest

import transaction
import ZODB
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping
from ZEO.ClientStorage import ClientStorage
from ZEO.Exceptions import ClientDisconnected
from ZODB.POSException import ReadOnlyError

import base
import cluster
from faults import (FAILOVER_TIMEOUT, REJOIN_TIMEOUT, WAIT_TIMEOUT, _bin_dir, client_state, say,
                    standby_only, zeo_logging)

SEE_TIMEOUT = 15.0   # a reader sees a commit made elsewhere
ITEMS = 40           # objects written before a partition, first loaded during it


class _PatientTransactionManager(transaction.TransactionManager):
    """Retries what attempts() retries, pausing a little after a disconnection (tpc_begin
    of a disconnected ClientStorage fails at once), for COMMIT_TIMEOUT at most."""

    def __init__(self):
        super().__init__(explicit=False)
        self.deadline = None

    def _retryable(self, error_type, error):
        if not super()._retryable(error_type, error):
            return False
        if self.deadline is not None and time.monotonic() > self.deadline:
            return False
        time.sleep(0.05 if isinstance(error, ClientDisconnected) else 0.005)
        return True


COMMIT_TIMEOUT = 30.0


class _Client:
    """A ClientStorage, its DB, and one Connection with its own transaction manager."""

    def __init__(self, addrs, **kw):
        self.storage = ClientStorage(list(addrs), base.STORAGE_NAME, wait=True,
                                     wait_timeout=WAIT_TIMEOUT, **kw)
        self.db = ZODB.DB(self.storage)
        self.tm = _PatientTransactionManager()
        self.conn = self.db.open(transaction_manager=self.tm)

    @property
    def root(self):
        return self.conn.root()

    def commit(self, change):
        """Runs change(root) in a transaction, retried on conflicts and disconnections."""
        self.tm.deadline = time.monotonic() + COMMIT_TIMEOUT
        for attempt in self.tm.attempts(1000000):
            with attempt:
                change(self.conn.root())

    def value(self, sync="begin"):
        """root['box']['value'] in a new transaction (begin) or after conn.sync()."""
        if sync == "begin":
            self.tm.begin()
        else:
            self.conn.sync()
        return self.conn.root()["box"]["value"]

    def wait_value(self, want, timeout=SEE_TIMEOUT, sync="begin"):
        """Waits until value() == want; returns the seconds it took, or raises."""
        t = time.monotonic()
        while True:
            got = self.value(sync)
            if got == want:
                return time.monotonic() - t
            if time.monotonic() - t > timeout:
                raise AssertionError(f"still reads {got!r}, not {want!r}, "
                                     f"{timeout:.0f} s later")
            time.sleep(0.01)

    def close(self):
        try:
            self.tm.abort()
            self.conn.close()
        finally:
            self.db.close()


def _set_box(value):
    def change(root):
        root["box"]["value"] = value
    return change


class _ReadOnlyBase(unittest.TestCase):
    cluster = None

    @classmethod
    def setUpClass(cls):
        base.close_pool()  # see faults._FaultTestBase.setUpClass
        zeo_logging(True)

    @classmethod
    def tearDownClass(cls):
        zeo_logging(False)

    def setUp(self):
        reason = standby_only()
        if reason:
            self.skipTest(reason)
        self.clients = []

    def tearDown(self):
        try:
            for c in self.clients:
                try:
                    c.close()
                except Exception:  # noqa: BLE001 - closing after a failure
                    pass
        finally:
            if self.cluster is not None:
                self.cluster.stop()

    def make_cluster(self):
        return cluster.FaultCluster(cluster.session(), _bin_dir())

    def client(self, addrs, **kw):
        c = _Client(addrs, **kw)
        self.clients.append(c)
        return c

    def start(self):
        """Starts the cluster, and a writer that made root['box'] = {'value': 0} and
        root['items'], ITEMS objects; returns (writer, index of a backup)."""
        c = self.cluster = self.make_cluster()
        c.start()
        c.wait_ready()
        writer = self.client(c.writable_addresses)

        def setup(root):
            root["box"] = PersistentMapping(value=0)
            items = root["items"] = OOBTree()
            for k in range(ITEMS):
                items[k] = PersistentMapping(value=k)
        writer.commit(setup)
        backup = next(i for i in range(c.size) if i != c.primary)
        # Sync mode: a commit is acknowledged once a majority has it, so the chosen backup
        # may not have it yet; wait until it says it is a caught-up backup.
        c.wait_probe(backup, "/replica", REJOIN_TIMEOUT)
        return writer, backup

    def connections(self, i):
        """ZEO connections server i has accepted so far (/metrics); fails if unreadable."""
        n = self.cluster.metric(i, "standby_zeo_connections_total")
        if n is None:
            self.fail_with_state(f"no standby_zeo_connections_total from {self.cluster.name(i)}")
        return n

    def fail_with_state(self, msg):
        clients = "\n".join(f"client {k}: {client_state(cl.storage, self.cluster)}"
                             for k, cl in enumerate(self.clients))
        self.fail(f"{msg}\nservers: {self.cluster.roles()}\n{clients}\n"
                  f"{self.cluster.log_tails(60)}")

    def commit(self, client, change, what):
        """client.commit(change); a failure (after COMMIT_TIMEOUT of retries) fails the
        test with the clients' and servers' state."""
        try:
            client.commit(change)
        except Exception as e:  # noqa: BLE001 - reported with the state
            self.fail_with_state(f"{what}: {type(e).__name__}: {e}")


class ReadOnlyClientTests(_ReadOnlyBase):

    def test_invalidations(self):
        writer, b = self.start()
        c = self.cluster
        reader = self.client([c.address(b, "zeo_read_only")], read_only=True)
        self.assertTrue(reader.storage.isReadOnly())
        reader.wait_value(0)
        before = self.connections(b)
        latencies = []
        for n in range(1, 7):
            self.commit(writer, _set_box(n), f"writer, commit {n}")
            try:
                latencies.append(reader.wait_value(n, sync="begin" if n % 2 else "sync"))
            except AssertionError as e:
                self.fail_with_state(f"read-only client of backup {c.name(b)}: {e}")
        self.assertTrue(reader.storage.is_connected())
        self.assertEqual(self.connections(b), before,
                         f"the read-only client reconnected to {c.name(b)}")
        # A read-only storage refuses to commit.
        reader.root["box"]["value"] = -1
        with self.assertRaises(ReadOnlyError):
            reader.tm.commit()
        reader.tm.abort()
        say(f"read-only client of backup {c.name(b)}: saw each of 6 commits after "
            f"{min(latencies) * 1000:.0f}-{max(latencies) * 1000:.0f} ms (begin()/sync()), "
            f"same connection; commit refused with ReadOnlyError")

    def test_fallback_follows_switchover(self):
        writer, b = self.start()
        c = self.cluster
        fb = self.client([c.address(b, "zeo"), c.address(b, "zeo_read_only")],
                         read_only_fallback=True)
        self.assertTrue(fb.storage.isReadOnly(),
                        f"fallback client on {c.name(b)} (a backup) is not read-only")
        fb.wait_value(0)
        self.commit(writer, _set_box(1), "writer, commit 1")
        fb.wait_value(1)
        fb.root["box"]["value"] = -1
        with self.assertRaises(ReadOnlyError):
            fb.tm.commit()
        fb.tm.abort()

        t = time.monotonic()
        r = c.cli("switchover", "--to", str(c.servers[b]["id"]))
        self.assertEqual(r.returncode, 0, f"switchover failed: {r.stdout}{r.stderr}")
        c.wait_primary(FAILOVER_TIMEOUT, describe=" after the switchover")
        self.assertEqual(c.primary, b)
        deadline = time.monotonic() + FAILOVER_TIMEOUT
        while fb.storage.isReadOnly():
            if time.monotonic() > deadline:
                self.fail_with_state(
                    f"read_only_fallback client still read-only {FAILOVER_TIMEOUT:.0f} s "
                    f"after {c.name(b)} became primary and listens on its writable address")
            time.sleep(0.05)
        upgraded = time.monotonic() - t
        self.commit(fb, _set_box(2), "fallback client after its upgrade, commit 2")
        writer.wait_value(2)
        say(f"read_only_fallback client of {c.name(b)}: read-only while it was a backup "
            f"(saw commits, commit refused); writable {upgraded:.2f} s after "
            f"switchover --to {b}, then committed")


class NetnsReadOnlyTests(cluster.NetnsNodesMixin, _ReadOnlyBase):

    def test_partitioned_backup_keeps_serving(self):
        writer, b = self.start()
        c = self.cluster
        ro_addr = c.address(b, "zeo_read_only")
        reader = self.client([ro_addr], read_only=True)
        fallback = self.client([c.address(b, "zeo"), ro_addr], read_only_fallback=True)
        self.assertTrue(fallback.storage.isReadOnly())
        for r in (reader, fallback):
            r.wait_value(0)
        before = self.connections(b)
        others = [i for i in range(c.size) if i != b]

        # Cut the backup from the other servers; the clients (node 4) reach everyone.
        spec = f"{c.node(b)}|{','.join(str(c.node(i)) for i in others)}"
        t = time.monotonic()
        self.nodes.partition(spec)
        # The others go on without it: the writer commits 1..5.
        for n in range(1, 6):
            self.commit(writer, _set_box(n), f"writer during the partition, commit {n}")
        committed = time.monotonic() - t
        # Wait until the backup says it is out of the primary component.
        deadline = time.monotonic() + FAILOVER_TIMEOUT
        while True:
            st = c.status(b)
            if st is not None and not st.get("in_primary_component", True):
                break
            if time.monotonic() > deadline:
                self.fail_with_state(f"{c.name(b)} still says in_primary_component "
                                     f"{FAILOVER_TIMEOUT:.0f} s after partition {spec}")
            time.sleep(0.05)
        role = st["role"]

        # The backup serves its last state: box is still 0 (every commit came after the
        # cut), and objects never loaded before load from it.
        for r in (reader, fallback):
            self.assertEqual(r.value(), 0)
            self.assertEqual(r.value(sync="sync"), 0)
            items = r.root["items"]
            self.assertEqual([items[k]["value"] for k in range(ITEMS)], list(range(ITEMS)))
            self.assertTrue(r.storage.is_connected())
        self.assertTrue(fallback.storage.isReadOnly())
        time.sleep(1.0)
        for r in (reader, fallback):
            self.assertEqual(r.value(), 0)
            self.assertTrue(r.storage.is_connected())

        # Heal: the backup catches up, the same connections see 5.
        t_heal = time.monotonic()
        self.nodes.heal()
        seen = []
        for r in (reader, fallback):
            try:
                seen.append(r.wait_value(5, timeout=REJOIN_TIMEOUT))
            except AssertionError as e:
                self.fail_with_state(f"after heal, client of {c.name(b)}: {e}")
        caught_up = time.monotonic() - t_heal
        self.commit(writer, _set_box(6), "writer after the heal, commit 6")
        for r in (reader, fallback):
            r.wait_value(6)
        after = self.connections(b)
        self.assertEqual(after, before,
                         f"the read-only clients reconnected to {c.name(b)} "
                         f"({before} -> {after} connections)")
        say(f"backup {c.name(b)} cut from the other servers (partition {spec}): role "
            f"{role!r}; its read-only clients (read_only and read_only_fallback) kept "
            f"reading its last state ({ITEMS} objects first loaded during the cut, value 0 "
            f"while the writer committed 1..5 in {committed:.2f} s); after heal they saw "
            f"value 5 within {caught_up:.2f} s and a new commit too, same connections")


CASES = [ReadOnlyClientTests, NetnsReadOnlyTests]


def load_tests(loader, standard_tests, pattern):
    suite = unittest.TestSuite()
    for case in CASES:
        suite.addTests(loader.loadTestsFromTestCase(case))
    return suite


if __name__ == "__main__":
    unittest.main()
