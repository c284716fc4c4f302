"""Servers for one ZODB conformance test: a 3-server Standby cluster, or a stock runzeo.

ZODB's storage test mixins assume a fresh, empty storage in every test (lastTransaction()
is z64, undoLog and iterators see only the test's own transactions, pack collects
everything unreachable), so every test gets servers of its own. Starting them takes a
second or more, so `Pool` starts the next test's servers while the current test runs.

Rules kept here:
* only 127.0.0.1;
* no port is handed out twice within the process (`PortAllocator`);
* every wait has a deadline, and a timeout raises with the tails of the server logs;
* every process started is stopped by its PID (SIGTERM, then SIGKILL after a bound) when
  its test ends, at the latest when the interpreter exits, and it is killed by the kernel
  if this process dies first (PR_SET_PDEATHSIG, through `setpriv`).

Backends (both offer `writable_addresses`, `read_only_addresses()`, `wait_ready()`,
`stop()`, `log_tails()`, `save_logs()`):
* `StandbyCluster`: three `standby-server` processes sharing one config file; only the
  primary listens on its `zeo` address, every server on its `zeo_read_only` address.
* `StockZeo` (STANDBY_ZEO_BACKEND=stock): one stock `runzeo` (msgpack, client-side
  conflict resolution, FileStorage), used to prove the harness itself.
"""

import atexit
import http.client
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"

# The protocol string a msgpack ZEO 5 server sends first on every connection.
ZEO_HANDSHAKE = b"M5"

# Bounds (seconds).
READY_TIMEOUT = float(os.environ.get("STANDBY_ZODB_READY_TIMEOUT", "30"))
STOP_GRACE = 5.0  # SIGTERM -> SIGKILL
KEYGEN_TIMEOUT = 30.0
PROBE_TIMEOUT = 1.0


class ClusterError(RuntimeError):
    """Servers did not start or did not become ready in time."""


# ---------------------------------------------------------------------------
# Ports


class PortAllocator:
    """Hands out free 127.0.0.1 ports, each at most once per process.

    Ports come from below the kernel's ephemeral range, so that no outgoing connection
    (a ClientStorage's, say) can be given one as its source port between our check and the
    server's bind. A candidate counts as free when both a TCP and a UDP socket can bind it
    (the gcs address is UDP, the others TCP; one allocator serves both).
    """

    def __init__(self):
        lo = 32768
        try:
            lo = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
        self._lo = 10000
        self._hi = max(lo, self._lo + 2000)  # exclusive
        # Start at a random place so that two runs at once rarely try the same ports.
        self._next = random.randrange(self._lo, self._hi)
        self._given = set()

    def take(self):
        span = self._hi - self._lo
        for _ in range(span):
            port = self._next
            self._next = self._lo + (self._next + 1 - self._lo) % span
            if port in self._given:
                continue
            if _port_is_free(port):
                self._given.add(port)
                return port
        raise ClusterError(f"no free port left in [{self._lo}, {self._hi})")


def _port_is_free(port):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


# ---------------------------------------------------------------------------
# Processes


class Session:
    """What the servers of one test run share: a scratch directory, the port allocator,
    the cluster keys, and the list of every process started (for the last-resort stop)."""

    def __init__(self):
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        base = base or tempfile.gettempdir()
        _remove_orphans(base)
        self.root = Path(tempfile.mkdtemp(prefix=f"{_ROOT_PREFIX}{os.getpid()}-", dir=base))
        self.ports = PortAllocator()
        self._procs = []
        self._keys_dir = None
        self._counter = 0
        self._setpriv = shutil.which("setpriv")
        self._closed = False

    def new_dir(self, prefix):
        self._counter += 1
        d = self.root / f"{prefix}-{self._counter:04d}"
        d.mkdir()
        return d

    def spawn(self, argv, log_path, env=None, cwd=None):
        """Starts argv with stdout and stderr appended to log_path; returns the Popen.

        The child gets its own session (a Ctrl-C at the terminal reaches only us; we stop
        the servers ourselves) and, where setpriv exists, SIGKILL when we die. The parent
        death signal follows the thread that forks, so spawn only from the main thread.
        """
        if self._setpriv:
            argv = [self._setpriv, "--pdeathsig", "KILL", "--"] + list(argv)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        self._procs.append(proc)
        return proc

    def stop_all(self):
        """Stops every process this session started that still runs."""
        stop_processes(self._procs)
        self._procs = [p for p in self._procs if p.poll() is None]

    def keys_dir(self, bin_dir):
        """The directory holding cluster.key and client.token, made once per session."""
        if self._keys_dir is None:
            d = self.root / "keys"
            argv = [str(Path(bin_dir) / "standby"), "keygen", "--dir", str(d)]
            try:
                r = subprocess.run(argv, capture_output=True, timeout=KEYGEN_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise ClusterError(f"{' '.join(argv)}: {e}") from e
            if r.returncode != 0 or not (d / "cluster.key").exists():
                raise ClusterError(
                    f"{' '.join(argv)} failed ({r.returncode}): "
                    f"{r.stderr.decode(errors='replace')[-2000:]}"
                )
            self._keys_dir = d
        return self._keys_dir

    def close(self):
        if self._closed:
            return
        self._closed = True
        self.stop_all()
        shutil.rmtree(self.root, ignore_errors=True)


_ROOT_PREFIX = "standby-zodb-"


def _remove_orphans(base):
    """Removes the scratch directories of earlier runs that were killed before they could
    clean up (their servers died with them): those whose runner PID no longer exists."""
    for d in Path(base).glob(_ROOT_PREFIX + "*"):
        try:
            pid = int(d.name[len(_ROOT_PREFIX):].split("-")[0])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass  # a live process of another user


def stop_processes(procs, grace=STOP_GRACE):
    """SIGTERM to each running process, SIGKILL to those still running after `grace`
    seconds; waits for every one (bounded) so none is left behind as a zombie."""
    running = [p for p in procs if p.poll() is None]
    for p in running:
        _signal(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in running:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in running:
        if p.poll() is None:
            _signal(p, signal.SIGKILL)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                print(f"cluster: process {p.pid} survived SIGKILL", file=sys.stderr)


def _signal(proc, sig):
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass


_session = None


def session():
    """The process-wide Session, created on first use and closed at interpreter exit."""
    global _session
    if _session is None:
        _session = Session()
        atexit.register(_session.close)
    return _session


def close_session():
    global _session
    if _session is not None:
        _session.close()
        _session = None


# ---------------------------------------------------------------------------
# Probes


def probe_zeo(addr, timeout=PROBE_TIMEOUT):
    """Connects to a ZEO address and returns the server's first frame (the protocol
    string, b'M5' for msgpack), or None if nothing accepted or nothing came in time."""
    try:
        with socket.create_connection(addr, timeout=timeout) as s:
            s.settimeout(timeout)
            head = _recv_exactly(s, 4)
            if head is None:
                return None
            (n,) = struct.unpack(">I", head)
            if n > 64:  # a handshake is 2 bytes; anything long is not one
                return None
            return _recv_exactly(s, n)
    except OSError:
        return None


def _recv_exactly(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def probe_http(addr, path, timeout=PROBE_TIMEOUT):
    """The status of GET path on addr, or None if it did not answer."""
    conn = http.client.HTTPConnection(addr[0], addr[1], timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _tail(path, lines=40):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        return f"({e})"
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------
# Backends


class _Backend:
    """What both backends share: a directory, processes, logs."""

    kind = "?"

    def __init__(self, sess, prefix):
        self.session = sess
        self.dir = sess.new_dir(prefix)
        self.procs = []  # (name, Popen, log path)
        self._stopped = False

    def _spawn(self, name, argv, env=None):
        log = self.dir / f"{name}.log"
        proc = self.session.spawn(argv, log, env=env, cwd=self.dir)
        self.procs.append((name, proc, log))

    def _check_alive(self):
        dead = [(n, p.returncode) for n, p, _ in self.procs if p.poll() is not None]
        if dead:
            raise ClusterError(
                f"{self.kind}: server(s) exited: "
                + ", ".join(f"{n} (status {rc})" for n, rc in dead)
                + "\n"
                + self.log_tails()
            )

    def log_tails(self, lines=40):
        parts = []
        for name, _, log in self.procs:
            parts.append(f"--- {name} ({log}), last {lines} lines:\n{_tail(log, lines)}")
        return "\n".join(parts)

    def save_logs(self, dest):
        """Copies the server logs (and the config) into dest, for a failed test."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for f in self.dir.iterdir():
            if f.is_file() and f.suffix in (".log", ".toml", ".conf"):
                shutil.copy2(f, dest / f.name)

    def pids(self):
        return [p.pid for _, p, _ in self.procs]

    def kill(self):
        """Stops the servers at once (the per-test watchdog uses it to unblock a hung
        client); stop() still cleans up."""
        for _, p, _ in self.procs:
            if p.poll() is None:
                _signal(p, signal.SIGKILL)

    def stop(self):
        if self._stopped:
            return
        self._stopped = True
        stop_processes([p for _, p, _ in self.procs])
        shutil.rmtree(self.dir, ignore_errors=True)


def _toml_string(value):
    """A TOML basic string (paths and host:port here: only \\ and " need escaping)."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class StandbyCluster(_Backend):
    """Three standby-server processes on loopback, one config file, fresh data dirs."""

    kind = "standby"
    size = 3

    def __init__(self, sess, bin_dir, protocol=None):
        super().__init__(sess, "standby")
        self.bin_dir = Path(bin_dir)
        keys = sess.keys_dir(self.bin_dir)
        self.servers = []
        for i in range(self.size):
            self.servers.append(
                {
                    "id": i,
                    "name": f"s{i}",
                    "gcs": sess.ports.take(),
                    "client": sess.ports.take(),
                    "admin": sess.ports.take(),
                    "zeo": sess.ports.take(),
                    "zeo_read_only": sess.ports.take(),
                }
            )
        self.config = self.dir / "standby.toml"
        self.config.write_text(self._config_text(keys, protocol or {}))
        # /status and /metrics need the admin token (the one of client_token_file).
        self.auth = {"Authorization": "Bearer " + (keys / "client.token").read_text().strip()}
        self.primary = None  # index into servers, known once ready

    def _config_text(self, keys, protocol):
        q = _toml_string
        out = [
            f"key_file = {q(keys / 'cluster.key')}",
            f"client_token_file = {q(keys / 'client.token')}",
            "client_plaintext = true",
            'mode = "sync"',
            "",
        ]
        for s in self.servers:
            out += [
                "[[server]]",
                f"id = {s['id']}",
                f"name = {q(s['name'])}",
            ]
            for k in ("gcs", "client", "admin", "zeo", "zeo_read_only"):
                out.append(f"{k} = {q(f'{HOST}:{s[k]}')}")
            out.append("")
        timing = {
            "token_timeout_ms": 100,
            "token_retransmit_timeout_ms": 30,
            "consensus_timeout_ms": 150,
            "join_timeout_ms": 20,
        }
        timing.update(protocol)
        out.append("[protocol]")
        out += [f"{k} = {v}" for k, v in timing.items()]
        return "\n".join(out) + "\n"

    def start(self):
        env = dict(os.environ)
        env["RUST_LOG"] = os.environ.get("STANDBY_ZODB_RUST_LOG", "warn")
        binary = str(self.bin_dir / "standby-server")
        for s in self.servers:
            data = self.dir / f"data-{s['name']}"
            data.mkdir()
            argv = [binary, "--config", str(self.config), "--id", str(s["id"]),
                    "--data", str(data)]
            self._spawn(s["name"], argv, env=env)
        return self

    @property
    def writable_addresses(self):
        return [(HOST, s["zeo"]) for s in self.servers]

    def read_only_addresses(self):
        """The read-only address of the current primary, or of every server with
        STANDBY_ZODB_RO=all.

        The primary alone by default: in sync mode a commit is acknowledged once a
        majority holds it, so a backup may still lag, and the mixins read right after
        writing (ReadOnlyStorage reopens read-only and loads what it just stored).
        """
        if os.environ.get("STANDBY_ZODB_RO") == "all":
            return [(HOST, s["zeo_read_only"]) for s in self.servers]
        primary = self._find_primary()
        if primary is None:
            primary = self.primary if self.primary is not None else 0
        return [(HOST, self.servers[primary]["zeo_read_only"])]

    def _find_primary(self):
        for i, s in enumerate(self.servers):
            if probe_zeo((HOST, s["zeo"])) == ZEO_HANDSHAKE:
                return i
        return None

    def wait_ready(self, timeout=READY_TIMEOUT):
        """Waits until one server is primary and serves ZEO (b'M5' on its zeo address),
        then until every server serves its read-only ZEO address; raises on timeout or if a
        server exits."""
        deadline = time.monotonic() + timeout
        admin_primary = None
        while True:
            self._check_alive()
            for i, s in enumerate(self.servers):
                if probe_zeo((HOST, s["zeo"])) == ZEO_HANDSHAKE:
                    self.primary = i
                    break
            if self.primary is not None:
                break
            if admin_primary is None:
                # Only for the error message: a primary whose ZEO face is not up.
                for i, s in enumerate(self.servers):
                    if probe_http((HOST, s["admin"]), "/primary") == 200:
                        admin_primary = i
            if time.monotonic() > deadline:
                said = (f"; admin says {self.servers[admin_primary]['name']} is primary"
                        if admin_primary is not None else "")
                raise ClusterError(
                    f"standby: no server answered {ZEO_HANDSHAKE!r} on its zeo address "
                    f"within {timeout:.0f} s{said}\n{self.log_tails()}"
                )
            time.sleep(0.05)
        for s in self.servers:
            while probe_zeo((HOST, s["zeo_read_only"])) != ZEO_HANDSHAKE:
                self._check_alive()
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"standby: {s['name']} did not answer {ZEO_HANDSHAKE!r} on its "
                        f"zeo_read_only address {HOST}:{s['zeo_read_only']} within "
                        f"{timeout:.0f} s\n{self.log_tails()}"
                    )
                time.sleep(0.05)
        # And the ring whole: every server the primary or a caught-up backup of its
        # component. A test that starts while the last server is still joining sees the
        # ring re-form under its first call (a stock client then gets "Connection lost").
        while True:
            self._check_alive()
            roles = [(probe_http((HOST, s["admin"]), "/primary"),
                      probe_http((HOST, s["admin"]), "/replica")) for s in self.servers]
            primaries = [i for i, (p, _) in enumerate(roles) if p == 200]
            if len(primaries) == 1 and all(200 in r for r in roles):
                self.primary = primaries[0]
                break
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"standby: the servers did not all join one primary component within "
                    f"{timeout:.0f} s (/primary, /replica: {roles})\n{self.log_tails()}"
                )
            time.sleep(0.05)
        return self


class StockZeo(_Backend):
    """A stock runzeo from the venv: msgpack, client-side conflict resolution (what a
    server that cannot run the application's classes offers), FileStorage.

    STANDBY_ZODB_STOCK_RESOLUTION=server runs it with ZEO's default, server-side conflict
    resolution instead, to check that the known failures (test_storage.KNOWN) are failures
    of client-side resolution only: they then pass and are reported as unexpected passes.

    Its writable address list also holds `dead` ports that nobody listens on, the way a
    Standby cluster's backups refuse connections on their zeo addresses, so the clients
    see the same shape of address list in both backends. Read-only clients use the same
    server: stock ZEO accepts register(name, read_only=True) on a writable storage.
    """

    kind = "stock"

    def __init__(self, sess, runzeo=None, dead=2):
        super().__init__(sess, "stock")
        self.runzeo = runzeo or str(Path(sys.executable).parent / "runzeo")
        self.port = sess.ports.take()
        self.dead_ports = [sess.ports.take() for _ in range(dead)]
        self.config = self.dir / "zeo.conf"
        client_resolution = os.environ.get("STANDBY_ZODB_STOCK_RESOLUTION", "client") != "server"
        self.config.write_text(
            "<zeo>\n"
            f"  address {HOST}:{self.port}\n"
            "  msgpack true\n"
            f"  client-conflict-resolution {'true' if client_resolution else 'false'}\n"
            "</zeo>\n"
            "<filestorage 1>\n"
            f"  path {self.dir / 'Data.fs'}\n"
            "</filestorage>\n"
            "<eventlog>\n"
            "  level WARNING\n"
            "  <logfile>\n"
            "    path STDOUT\n"
            "  </logfile>\n"
            "</eventlog>\n"
        )

    def start(self):
        self._spawn("runzeo", [self.runzeo, "-C", str(self.config)])
        return self

    @property
    def writable_addresses(self):
        return [(HOST, self.port)] + [(HOST, p) for p in self.dead_ports]

    def read_only_addresses(self):
        return [(HOST, self.port)]

    def wait_ready(self, timeout=READY_TIMEOUT):
        deadline = time.monotonic() + timeout
        while probe_zeo((HOST, self.port)) != ZEO_HANDSHAKE:
            self._check_alive()
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"stock: runzeo did not answer {ZEO_HANDSHAKE!r} on {HOST}:{self.port} "
                    f"within {timeout:.0f} s\n{self.log_tails()}"
                )
            time.sleep(0.05)
        return self


# ---------------------------------------------------------------------------
# Choosing and pooling


def default_bin_dir():
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    return os.environ.get("STANDBY_BIN", os.path.join(target, "debug"))


CONFORMANCE_TIMING = {
    "token_timeout_ms": 1000,
    "token_retransmit_timeout_ms": 100,
    "consensus_timeout_ms": 1200,
    "join_timeout_ms": 50,
}


def backend_factory(kind=None):
    """A function that makes one (not yet started) backend of the kind that
    STANDBY_ZEO_BACKEND names: 'standby' (default) or 'stock'."""
    kind = kind or os.environ.get("STANDBY_ZEO_BACKEND", "standby")
    if kind == "stock":
        return lambda: StockZeo(session())
    if kind == "standby":
        bin_dir = Path(default_bin_dir()).resolve()
        for b in ("standby-server", "standby"):
            if not os.access(bin_dir / b, os.X_OK):
                raise ClusterError(
                    f"{bin_dir / b} not found or not executable: build the servers "
                    "(cargo build) or point STANDBY_BIN at their directory"
                )
        # Tolerant timing: ZODB's race tests run 64 client threads beside three debug
        # servers on two cores, which can starve a server past a 100 ms token timeout; the
        # ring then re-forms and may move the primary, and those tests take no disconnect.
        # (The fault tests keep the fast timing: they measure failover.)
        return lambda: StandbyCluster(session(), bin_dir, protocol=CONFORMANCE_TIMING)
    raise ClusterError(f"STANDBY_ZEO_BACKEND must be 'standby' or 'stock', not {kind!r}")


class Pool:
    """Hands out ready backends, one per test, keeping at most one spare already
    starting (STANDBY_ZODB_PRESTART=0 turns that off). Call take() and close() from the
    main thread only (see Session.spawn)."""

    def __init__(self, factory, prestart=None):
        self._factory = factory
        if prestart is None:
            prestart = os.environ.get("STANDBY_ZODB_PRESTART", "1") != "0"
        self._prestart = prestart
        self._spare = None

    def _start_one(self):
        b = self._factory()
        try:
            return b.start()
        except BaseException:
            b.stop()
            raise

    def take(self, timeout=READY_TIMEOUT):
        b, self._spare = self._spare, None
        if b is None:
            b = self._start_one()
        try:
            b.wait_ready(timeout)
        except BaseException:
            b.stop()
            raise
        if self._prestart:
            try:
                self._spare = self._start_one()
            except BaseException:
                b.stop()
                raise
        return b

    def close(self):
        if self._spare is not None:
            self._spare.stop()
            self._spare = None


# ---------------------------------------------------------------------------
# Fault tests (faults.py, readonly.py): one server at a time, network namespaces
#
# Added for the fault tests; nothing above depends on it. `FaultCluster` is a
# `StandbyCluster` whose servers can be killed, restarted on the same data directory and
# asked who is primary, one by one; `NetnsCluster` runs the same three servers in nodes
# 1-3 of a netns-cluster network (`NetnsNodes`), so that the servers can be cut from each
# other while the clients (node 4) still reach all of them.

SERVER_ADDRESS_KINDS = ("gcs", "client", "admin", "zeo", "zeo_read_only")


class FaultCluster(StandbyCluster):
    """Three standby-server processes on loopback, each under the test's control.

    Server i's log (`sN.log`) collects the output of every run of it; a restarted server
    gets the same data directory. Waits are bounded and name the servers' state when they
    time out."""

    kind = "standby-faults"

    def __init__(self, sess, bin_dir, protocol=None, rust_log=None):
        super().__init__(sess, bin_dir, protocol)
        self.rust_log = rust_log or os.environ.get(
            "STANDBY_ZODB_FAULTS_RUST_LOG", "warn,server=info,replica=info")

    # -- where things are

    def host(self, i):
        return HOST

    def address(self, i, kind):
        """(host, port) of server i's `kind` address (one of SERVER_ADDRESS_KINDS)."""
        return (self.host(i), self.servers[i][kind])

    @property
    def writable_addresses(self):
        return [self.address(i, "zeo") for i in range(self.size)]

    def read_only_addresses(self):
        return [self.address(i, "zeo_read_only") for i in range(self.size)]

    def data_dir(self, i):
        return self.dir / f"data-{self.servers[i]['name']}"

    def name(self, i):
        return self.servers[i]["name"]

    # -- processes

    def _server_argv(self, i):
        return [str(self.bin_dir / "standby-server"), "--config", str(self.config),
                "--id", str(self.servers[i]["id"]), "--data", str(self.data_dir(i))]

    def _launch(self, i):
        env = dict(os.environ)
        env["RUST_LOG"] = self.rust_log
        name = self.name(i)
        log = self.dir / f"{name}.log"
        proc = self.session.spawn(self._server_argv(i), log, env=env, cwd=self.dir)
        self.procs = [e for e in self.procs if e[0] != name] + [(name, proc, log)]
        return proc

    def start(self):
        for i in range(self.size):
            self.data_dir(i).mkdir()
            self._launch(i)
        return self

    def process(self, i):
        name = self.name(i)
        for n, p, _ in self.procs:
            if n == name:
                return p
        return None

    def kill_server(self, i, sig=signal.SIGKILL):
        """Sends sig to server i (SIGKILL: kill -9) and, for SIGKILL, reaps it."""
        p = self.process(i)
        _signal(p, sig)
        if sig == signal.SIGKILL:
            p.wait(timeout=10)

    def restart_server(self, i):
        """Starts server i again on its data directory (it must have exited)."""
        p = self.process(i)
        if p is not None and p.poll() is None:
            raise ClusterError(f"{self.name(i)} still runs (pid {p.pid})")
        self._launch(i)

    def running(self, i):
        p = self.process(i)
        return p is not None and p.poll() is None

    # -- what the servers say

    def status(self, i, timeout=PROBE_TIMEOUT):
        """Server i's /status JSON, or None if it did not answer."""
        import json

        addr = self.address(i, "admin")
        conn = http.client.HTTPConnection(addr[0], addr[1], timeout=timeout)
        try:
            conn.request("GET", "/status", headers=self.auth)
            r = conn.getresponse()
            return json.loads(r.read().decode())
        except (OSError, http.client.HTTPException, ValueError):
            return None
        finally:
            conn.close()

    def probe(self, i, path):
        """The HTTP status of GET path on server i's admin address, or None."""
        return probe_http(self.address(i, "admin"), path)

    def metric(self, i, name):
        """The value of an unlabelled line `name VALUE` of server i's /metrics, or None."""
        addr = self.address(i, "admin")
        conn = http.client.HTTPConnection(addr[0], addr[1], timeout=PROBE_TIMEOUT)
        try:
            conn.request("GET", "/metrics", headers=self.auth)
            for line in conn.getresponse().read().decode().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == name:
                    return float(parts[1])
        except (OSError, http.client.HTTPException, ValueError):
            return None
        finally:
            conn.close()
        return None

    def zeo_accepts(self, i):
        """True if server i answers the ZEO handshake on its writable address (only the
        primary listens there)."""
        return probe_zeo(self.address(i, "zeo")) == ZEO_HANDSHAKE

    def primaries(self):
        """Indexes of the servers whose writable ZEO address answers now."""
        return [i for i in range(self.size) if self.running(i) and self.zeo_accepts(i)]

    def wait_primary(self, timeout, other_than=None, describe=""):
        """Waits until exactly one server (other than `other_than`, if given) answers on
        its writable ZEO address and says 200 on /primary; returns its index."""
        deadline = time.monotonic() + timeout
        while True:
            ps = [i for i in self.primaries() if i != other_than]
            if len(ps) == 1 and self.probe(ps[0], "/primary") == 200:
                self.primary = ps[0]
                return ps[0]
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"no single new primary within {timeout:.0f} s{describe}: writable ZEO "
                    f"answers at {[self.name(i) for i in self.primaries()]}; "
                    f"{self.roles()}\n{self.log_tails()}")
            time.sleep(0.05)

    def roles(self):
        """'s0 primary, s1 backup, s2 (not running)' from /status, for messages."""
        out = []
        for i in range(self.size):
            if not self.running(i):
                out.append(f"{self.name(i)} (not running)")
                continue
            st = self.status(i)
            out.append(f"{self.name(i)} " + (
                f"{st['role']} last_tid {st['last_tid']} view {st['view']}" if st
                else "(no answer)"))
        return ", ".join(out)

    def wait_probe(self, i, path, timeout, describe=""):
        """Waits until server i answers 200 on its admin `path` (/replica, /primary)."""
        deadline = time.monotonic() + timeout
        while self.probe(i, path) != 200:
            if not self.running(i):
                raise ClusterError(f"{self.name(i)} exited\n{self.log_tails()}")
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{self.name(i)} did not answer 200 on {path} within {timeout:.0f} s"
                    f"{describe}; {self.roles()}\n{self.log_tails()}")
            time.sleep(0.05)

    def cli(self, *args, timeout=30.0):
        """Runs `standby --config F ARGS...`; returns the CompletedProcess (text)."""
        argv = [str(self.bin_dir / "standby"), "--config", str(self.config)] + list(args)
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise ClusterError(f"{' '.join(argv)}: no answer within {timeout:.0f} s") from e

    def wait_ready(self, timeout=READY_TIMEOUT):
        """As StandbyCluster.wait_ready, on this cluster's addresses: one primary serves
        ZEO on its writable address, every server on its read-only address."""
        deadline = time.monotonic() + timeout
        self.primary = self.wait_primary(timeout, describe=" at start")
        # All three in one view: a server joining later makes a view change, which the
        # tests mean to cause themselves.
        for i in range(self.size):
            if i != self.primary:
                self.wait_probe(i, "/replica", max(0.0, deadline - time.monotonic()),
                                describe=" at start")
        self.primary = self.wait_primary(max(0.0, deadline - time.monotonic()),
                                         describe=" at start")
        for i in range(self.size):
            while probe_zeo(self.address(i, "zeo_read_only")) != ZEO_HANDSHAKE:
                self._check_alive()
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"{self.name(i)} did not answer {ZEO_HANDSHAKE!r} on its "
                        f"zeo_read_only address within {timeout:.0f} s\n{self.log_tails()}")
                time.sleep(0.05)
        return self


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be used here (not root, no harness); the reason is the
    message."""


def netns_harness():
    """The netns-cluster script: $STANDBY_NETNS_HARNESS, else ../shared/harness/ beside
    the repository."""
    env = os.environ.get("STANDBY_NETNS_HARNESS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "harness" / "netns-cluster"


def netns_unavailable_reason():
    """None if NetnsNodes can work here, else why not (for a skip message)."""
    if os.geteuid() != 0:
        return ("needs root: the servers are cut from each other with network namespaces "
                "(netns-cluster); run the suite as root to test partitions")
    h = netns_harness()
    if not os.access(h, os.X_OK):
        return f"netns-cluster harness not found at {h} (set STANDBY_NETNS_HARNESS)"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) not found: needed for network namespaces"
    return None


_NETNS_PREFIX = "zf"
_NETNS_UP_TIMEOUT = 180.0  # `up` may apt-get install nftables/iptables the first time


class NetnsNodes:
    """N hosts in network namespaces made by the netns-cluster harness, with their own
    prefix (zf<pid>x<n>) and subnet, so that they clash with nobody.

    `enter(i)` moves the calling thread (and every thread and process it starts from then
    on) into node i: sockets it opens then live there. Call it from the main thread; the
    ClientStorage threads it starts inherit node i. `leave()` comes back.
    """

    _count = 0

    def __init__(self, n, subnet=None):
        NetnsNodes._count += 1
        self.n = n
        self.prefix = f"{_NETNS_PREFIX}{os.getpid()}x{NetnsNodes._count}n"
        self.subnet = subnet or os.environ.get("STANDBY_NETNS_SUBNET", "10.231.7")
        self.harness = netns_harness()
        self._orig_ns = None
        self._up = False
        self.cuts = []

    def _env(self):
        env = dict(os.environ)
        env["NETNS_CLUSTER_PREFIX"] = self.prefix
        env["NETNS_CLUSTER_SUBNET"] = self.subnet
        return env

    def run(self, *args, timeout=30.0):
        """Runs `netns-cluster ARGS...`; raises ClusterError when it fails."""
        argv = [str(self.harness)] + [str(a) for a in args]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                               env=self._env())
        except subprocess.TimeoutExpired as e:
            raise ClusterError(f"{' '.join(argv)}: still running after {timeout:.0f} s") from e
        if r.returncode != 0:
            raise ClusterError(f"{' '.join(argv)} failed ({r.returncode}): "
                               f"{(r.stderr or r.stdout)[-2000:]}")
        return r.stdout

    def up(self):
        _remove_orphan_netns()
        self._up = True  # a failed `up` leaves state that `down` cleans
        atexit.register(self.down)
        self.run("up", self.n, timeout=_NETNS_UP_TIMEOUT)
        return self

    def down(self):
        self.leave()
        if self._up:
            self._up = False
            try:
                self.run("down", "--force", timeout=60)
            except ClusterError as e:
                print(f"cluster: {e}", file=sys.stderr)

    def ns(self, i):
        return f"{self.prefix}{i}"

    def addr(self, i):
        return f"{self.subnet}.{i}"

    def enter(self, i):
        if self._orig_ns is None:
            self._orig_ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(f"/run/netns/{self.ns(i)}", os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)

    def leave(self):
        if self._orig_ns is not None:
            _setns(self._orig_ns)
            os.close(self._orig_ns)
            self._orig_ns = None

    def partition(self, *specs):
        """`netns-cluster partition SPEC...`: e.g. '1|2,3' cuts node 1 from nodes 2 and 3
        (both ways); nodes not named (the clients' node) still reach everyone."""
        self.run("partition", *specs)
        self.cuts.extend(specs)

    def heal(self):
        self.run("heal")
        self.cuts = []


def _setns(fd):
    import ctypes

    clone_newnet = 0x40000000
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, clone_newnet) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


def _remove_orphan_netns():
    """Takes down the netns clusters of earlier runs that were killed before they could
    (their prefix holds the PID of a process that no longer exists)."""
    base = Path("/run/netns-cluster")
    if not base.is_dir():
        return
    for d in base.glob(_NETNS_PREFIX + "*"):
        rest = d.name[len(_NETNS_PREFIX):]
        try:
            pid = int(rest.split("x")[0])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        env = dict(os.environ, NETNS_CLUSTER_PREFIX=d.name)
        subprocess.run([str(netns_harness()), "down", "--force"], env=env,
                       capture_output=True, timeout=60)


class NetnsCluster(FaultCluster):
    """FaultCluster with server i in node i+1 of `nodes` (a NetnsNodes that is up), on
    that node's address; the test talks to them from another node it has entered."""

    kind = "standby-netns"

    def __init__(self, sess, bin_dir, nodes, protocol=None, rust_log=None):
        self.nodes = nodes
        super().__init__(sess, bin_dir, protocol, rust_log)

    def node(self, i):
        """The netns-cluster node of server i."""
        return i + 1

    def host(self, i):
        return self.nodes.addr(self.node(i))

    def _config_text(self, keys, protocol):
        # The loopback file with each server's addresses on its node instead: every port
        # of the file is distinct, so each "127.0.0.1:PORT" names one server's address.
        text = super()._config_text(keys, protocol)
        for i, s in enumerate(self.servers):
            for k in SERVER_ADDRESS_KINDS:
                text = text.replace(f'"{HOST}:{s[k]}"', f'"{self.host(i)}:{s[k]}"')
        return text

    def _server_argv(self, i):
        return ["ip", "netns", "exec", self.nodes.ns(self.node(i))] + super()._server_argv(i)


class NetnsNodesMixin:
    """For a test case whose servers run in nodes 1-3 of a netns-cluster network and whose
    clients run in node 4 (the test's own thread enters it): skipped with the reason when
    namespaces cannot be made (not root), the network removed after the test."""

    nodes = None

    def setUp(self):
        super().setUp()
        reason = netns_unavailable_reason()
        if reason:
            self.skipTest(reason)
        self.nodes = NetnsNodes(4).up()
        self.nodes.enter(4)

    def tearDown(self):
        try:
            super().tearDown()
        finally:
            if self.nodes is not None:
                self.nodes.down()

    def make_cluster(self):
        return NetnsCluster(session(), Path(default_bin_dir()).resolve(), self.nodes)
