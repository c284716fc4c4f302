"""The test case base the ZODB storage mixins run on: a ClientStorage connected to
fresh servers (cluster.py) for every test.

What the mixins expect from their host class, and how it is met here (ZEO's own
ZEO/tests/testZEO.py hosts them the same way):
* `self._storage`: an open storage, empty at the start of the test -> a ClientStorage
  given every writable ZEO address of a fresh cluster (only the primary accepts, so it
  lands there), waiting up to 30 s for the connection.
* `_new_storage_client()` (BasicStorage's race tests, up to 64 at once): another
  ClientStorage to the same cluster.
* `open(read_only=False)` (ReadOnlyStorage, PersistentStorage): close and reopen
  `self._storage`, read-only ones on the read-only ZEO address.
"""

import atexit

from ZEO.ClientStorage import ClientStorage
from ZODB.tests import StorageTestBase

import cluster

# ZEO's default storage name; Standby's `zeo_storage` defaults to it as well.
STORAGE_NAME = "1"
# How long a ClientStorage waits for a server to accept its register (seconds).
WAIT_TIMEOUT = 30

_pool = None


def pool():
    """The process-wide cluster pool (main thread only)."""
    global _pool
    if _pool is None:
        _pool = cluster.Pool(cluster.backend_factory())
        atexit.register(close_pool)
    return _pool


def close_pool():
    global _pool
    if _pool is not None:
        _pool.close()
        _pool = None


class NullDB:
    """Stands in for the ZODB.DB a ClientStorage reports invalidations to, when a test
    uses the storage directly."""

    def invalidate(self, tid, oids):
        pass

    def invalidateCache(self):
        pass

    def transform_record_data(self, data):
        return data

    def untransform_record_data(self, data):
        return data


class ClusterTestBase(StorageTestBase.StorageTestBase):
    """One fresh cluster and one ClientStorage per test."""

    # The backend of the running test, for the runner's watchdog and log saving.
    cluster = None

    def setUp(self):
        # Take the servers first: StorageTestBase.setUp moves into a per-test temp dir
        # and points tempfile there, and the servers live elsewhere.
        self.cluster = pool().take()
        try:
            StorageTestBase.StorageTestBase.setUp(self)
            self._storage = self._client()
        except BaseException:
            self.cluster.stop()
            raise

    def tearDown(self):
        try:
            StorageTestBase.StorageTestBase.tearDown(self)
        finally:
            self.cluster.stop()

    def _client(self, read_only=False, **kw):
        """A new ClientStorage to this test's cluster, connected (or ClientDisconnected
        after WAIT_TIMEOUT)."""
        if read_only:
            addrs = self.cluster.read_only_addresses()
        else:
            addrs = self.cluster.writable_addresses
        client = ClientStorage(
            list(addrs),
            STORAGE_NAME,
            read_only=read_only,
            wait=True,
            wait_timeout=WAIT_TIMEOUT,
            **kw,
        )
        client.registerDB(NullDB())
        return client

    def _new_storage_client(self):
        return self._client()

    def open(self, read_only=False):
        if self._storage is not None:
            self._storage.close()
        self._storage = self._client(read_only=read_only)
