"""Helpers of scripts/bench-zodb (run with the ZODB venv's python):

    write   a stock ZODB client committing in a loop through ClientStorage(every zeo
            address), one new key per transaction, retried by transaction.manager.attempts();
            every acknowledged commit is appended to --acks as "seq t_begin t_ack value"
            (t_* = time.time() when the successful attempt began / when commit() returned)
    check   the failover figures from --acks and --events (lines "kill T sN" and
            "restart T sN", written by the bash script), then a fresh ClientStorage reads
            back every acknowledged commit (lost = 0)
    ratios  Standby (zeo-ext) against the peers, per cell, from the kit's results.jsonl files
    phases  where one client's commit time goes: a single stock client updates one 100-byte
            object per transaction, and the time of ClientStorage.tpc_vote (one round trip:
            the server takes the locks and checks) and ClientStorage.tpc_finish (one round
            trip: the server makes the transaction durable) is taken per commit
    loads   what one cold load costs a stock client: N objects of 100 bytes are written, then
            a fresh ClientStorage (empty cache) loads each once with ClientStorage.load, one
            round trip each, as an application activating ghosts one at a time does; prints
            loads/s and the CPU per load of the client process (all its threads, its asyncio
            I/O thread included) and of the server processes given by --pids

Nothing here starts or stops a server.
"""

import argparse
import json
import os
import sys
import time

# The write loop sleeps this long before retrying after ClientDisconnected: a
# disconnected ClientStorage fails tpc_begin at once, and without a pause the retries
# spin on the CPU the election needs (see tests/zodb/faults.py).
DISCONNECTED_BACKOFF = 0.01
ATTEMPTS = 1_000_000       # attempts() bound; the real bound is the deadline
WAIT_TIMEOUT = 30.0


def addrs(text):
    out = []
    for a in text.split(","):
        host, port = a.rsplit(":", 1)
        out.append((host, int(port)))
    return out


def cmd_write(args):
    import transaction
    import ZODB
    from BTrees.IOBTree import IOBTree
    from ZEO.ClientStorage import ClientStorage
    from ZEO.Exceptions import ClientDisconnected

    errors = {}

    class TM(transaction.TransactionManager):
        def _retryable(self, error_type, error):
            retry = super()._retryable(error_type, error)
            errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
            if time.monotonic() > deadline:
                return False
            if retry and isinstance(error, ClientDisconnected):
                time.sleep(DISCONNECTED_BACKOFF)
            return retry

    deadline = time.monotonic() + args.max_seconds
    tm = TM(explicit=False)
    st = ClientStorage(args.addrs, args.storage, wait=True, wait_timeout=WAIT_TIMEOUT)
    db = ZODB.DB(st)
    conn = db.open(transaction_manager=tm)
    for attempt in tm.attempts(100):
        with attempt:
            root = conn.root()
            if "failover" not in root:
                root["failover"] = IOBTree()
    seq = 0
    rnd = os.urandom
    with open(args.acks, "a", buffering=1) as out:
        while not os.path.exists(args.stop) and time.monotonic() < deadline:
            value = f"{seq}:{rnd(4).hex()}"
            t_begin = None
            try:
                for attempt in tm.attempts(ATTEMPTS):
                    with attempt:
                        t_begin = time.time()
                        conn.root()["failover"][seq] = value
            except Exception as e:  # noqa: BLE001 - reported, and the key is not reused
                tm.abort()
                print(f"write: seq {seq}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                seq += 1
                continue
            out.write(f"{seq} {t_begin:.6f} {time.time():.6f} {value}\n")
            seq += 1
    conn.close()
    db.close()
    print(f"write: {seq} transactions, retried errors: "
          + (", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "none"), flush=True)


def read_acks(path):
    acks = []
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) == 4:
                acks.append((int(p[0]), float(p[1]), float(p[2]), p[3]))
    return acks


def cmd_check(args):
    import transaction
    import ZODB
    from ZEO.ClientStorage import ClientStorage

    acks = read_acks(args.acks)
    events = []
    with open(args.events) as f:
        for line in f:
            p = line.split()
            if len(p) >= 3:
                events.append((p[0], float(p[1]), p[2]))
    kills = [e for e in events if e[0] == "kill"]
    bounds = [e for e in events if e[0] in ("restart", "caught-up")]
    res = {"commits": len(acks), "failovers": []}
    print(f"failover: {len(acks)} acknowledged commits by one stock client")
    for i, (_, t_kill, server) in enumerate(kills):
        later = [e[1] for e in bounds if e[1] > t_kill]
        end = min(later) if later else float("inf")
        nexts = [k[1] for k in kills if k[1] > t_kill]
        end = min([end] + nexts)
        after = sorted(a[2] for a in acks if t_kill < a[2] <= end)
        before = [a[2] for a in acks if a[2] <= t_kill]
        if not after:
            print(f"  kill {i + 1} ({server}): no commit acknowledged afterwards")
            res["failovers"].append({"server": server, "recovered": False})
            continue
        # The longest stretch without an acknowledged commit, from the kill on: its end is
        # when commits flow again (an ack right after the kill may be one that was in flight).
        edges = [t_kill] + after
        gaps = [(b - a, b) for a, b in zip(edges, edges[1:])]
        gap, gap_end = max(gaps)
        # The first commit that began after the kill and was acknowledged.
        fresh = sorted(a[2] for a in acks if a[1] > t_kill and a[2] <= end)
        row = {
            "server": server,
            "recovered": True,
            "first_ack_after_kill_ms": round(1000 * (after[0] - t_kill), 1),
            "commits_again_after_ms": round(1000 * (gap_end - t_kill), 1),
            "first_commit_begun_after_kill_ms": round(1000 * (fresh[0] - t_kill), 1) if fresh else None,
            "longest_gap_ms": round(1000 * gap, 1),
            "last_ack_before_kill_ms": round(1000 * (t_kill - before[-1]), 1) if before else None,
        }
        listen = [e for e in events if e[0] == "zeo-listening" and t_kill < e[1] <= end]
        row["new_primary_listens_ms"] = round(1000 * (listen[0][1] - t_kill), 1) if listen else None
        res["failovers"].append(row)
        print(f"  kill -9 {i + 1} ({server}): commits acknowledged again {row['commits_again_after_ms']} ms"
              f" after the kill (first ack after the kill {row['first_ack_after_kill_ms']} ms,"
              f" first commit begun after the kill {row['first_commit_begun_after_kill_ms']} ms;"
              f" the new primary {listen[0][2] if listen else '?'} listened on its zeo address"
              f" {row['new_primary_listens_ms']} ms after the kill;"
              f" last ack before it {row['last_ack_before_kill_ms']} ms earlier)")
    # Read back every acknowledged commit with a fresh client.
    st = ClientStorage(args.addrs, args.storage, wait=True, wait_timeout=WAIT_TIMEOUT)
    db = ZODB.DB(st)
    try:
        tm = transaction.TransactionManager(explicit=False)
        conn = db.open(transaction_manager=tm)
        tree = conn.root()["failover"]
        lost = [a[0] for a in acks if tree.get(a[0]) is None]
        wrong = [a[0] for a in acks if tree.get(a[0]) not in (None, a[3])]
        res.update(lost=len(lost), wrong=len(wrong), keys_in_tree=len(tree))
        tm.abort()
        conn.close()
    finally:
        db.close()
    print(f"  read back with a fresh ClientStorage: {len(acks)} acknowledged, lost {len(lost)},"
          f" wrong value {len(wrong)} (keys in the tree: {res['keys_in_tree']})"
          + (f"; lost e.g. {lost[:10]}" if lost else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    ok = not lost and not wrong and all(r["recovered"] for r in res["failovers"]) \
        and len(res["failovers"]) == len(kills)
    return 0 if ok else 1


def cmd_ratios(args):
    rows = []
    for path in args.results:
        with open(path) as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    writes, reads = {}, {}
    failed = 0
    for r in rows:
        if r.get("errors"):
            failed += 1
            print(f"FAILED cell: {r.get('system')} {r.get('kind')} {r.get('op', '')} clients"
                  f" {r.get('clients', '')}: {str(r['errors'])[:300]}")
            continue
        if r["kind"] == "write":
            writes[(r["system"], r["op"], r["k"], r["size"], r["clients"])] = r
        else:
            reads[(r["system"], r["clients"])] = r
    ours = "zeo-ext"
    peers = sorted({k[0] for k in writes} | {k[0] for k in reads})
    peers = [p for p in peers if p != ours]
    cells = sorted({k[1:] for k in writes if k[0] == ours},
                   key=lambda c: (c[3], c[0], c[1]))
    print("| workload | clients | standby commits/s | " + " | ".join(f"/ {p}" for p in peers) + " |")
    print("|---|---:|---:|" + "---:|" * len(peers))
    for op, k, size, n in cells:
        mine = writes[(ours, op, k, size, n)]["commits_s"]
        cols = []
        for p in peers:
            w = writes.get((p, op, k, size, n))
            cols.append(f"{mine / w['commits_s']:.2f}" if w and w["commits_s"] else "-")
        label = f"{op} {k}x{size // 1024}KiB" if size >= 1024 else f"{op} {k}x{size}B"
        print(f"| {label} | {n} | {mine:,.0f} | " + " | ".join(cols) + " |")
    print()
    print("| cold reads, clients | standby obj/s | " + " | ".join(f"/ {p}" for p in peers) + " |")
    print("|---:|---:|" + "---:|" * len(peers))
    for n in sorted({k[1] for k in reads if k[0] == ours}):
        mine = reads[(ours, n)]["cold"]["objects_s"]
        cols = []
        for p in peers:
            r = reads.get((p, n))
            cols.append(f"{mine / r['cold']['objects_s']:.2f}" if r else "-")
        print(f"| {n} | {mine:,.0f} | " + " | ".join(cols) + " |")
    print()
    print("| system | workload | clients | server CPU s | clients CPU s | window s | server cores | others % |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for key in sorted(writes, key=lambda c: (c[0], c[4], c[1], c[2])):
        r = writes[key]
        c = r.get("cpu") or {}
        sys_, op, k, size, n = key
        label = f"{op} {k}x{size // 1024}KiB" if size >= 1024 else f"{op} {k}x{size}B"
        cores = c.get("server_cpu_s", 0) / r["wall_s"] if r.get("wall_s") else 0
        print(f"| {sys_} | {label} | {n} | {c.get('server_cpu_s', '-')} | {c.get('clients_cpu_s', '-')}"
              f" | {r.get('wall_s', '-')} | {cores:.2f} | {c.get('others_pct', '-')} |")
    return 1 if failed else 0


def cmd_phases(args):
    import transaction
    import ZODB
    from persistent.mapping import PersistentMapping
    from ZEO.ClientStorage import ClientStorage

    times = {"tpc_vote": [], "tpc_finish": []}

    def timed(name, f):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return f(*a, **kw)
            finally:
                times[name].append(time.perf_counter() - t)
        return wrapper

    for name in times:
        setattr(ClientStorage, name, timed(name, getattr(ClientStorage, name)))

    tm = transaction.TransactionManager(explicit=False)
    db = ZODB.DB(ClientStorage(args.addrs, args.storage, wait=True, wait_timeout=WAIT_TIMEOUT))
    conn = db.open(transaction_manager=tm)
    with tm:
        o = conn.root()["phases"] = PersistentMapping()
        o["data"] = os.urandom(50).hex()
    for v in times.values():
        v.clear()
    total = []
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        t = time.perf_counter()
        with tm:
            o["data"] = os.urandom(50).hex()
        total.append(time.perf_counter() - t)
    conn.close()
    db.close()

    def stats(v):
        v = sorted(v)
        return (f"p50 {1000 * v[len(v) // 2]:.3f} ms, mean {1000 * sum(v) / len(v):.3f} ms,"
                f" p99 {1000 * v[min(len(v) - 1, int(len(v) * 0.99))]:.3f} ms")
    print(f"{args.label}: {len(total)} commits in {args.seconds:.0f} s, one client, update 1x100B")
    print(f"  whole commit (transaction.commit): {stats(total)}")
    for name, v in times.items():
        print(f"  ClientStorage.{name}: {stats(v)}")
    rest = [a - b - c for a, b, c in zip(total, times["tpc_vote"], times["tpc_finish"])]
    print(f"  the rest (client side, stores, tpc_begin): {stats(rest)}")


def proc_cpu_s(pids):
    """CPU seconds (user + system) of the given processes, all their threads."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # 0 (a stopped server) or gone: counts nothing
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tck


def cmd_loads(args):
    import transaction
    import ZODB
    from persistent.mapping import PersistentMapping
    from ZEO.ClientStorage import ClientStorage

    tm = transaction.TransactionManager(explicit=False)
    db = ZODB.DB(ClientStorage(args.addrs, args.storage, wait=True, wait_timeout=WAIT_TIMEOUT))
    conn = db.open(transaction_manager=tm)
    objs = []
    for start in range(0, args.objects, 1000):
        with tm:
            batch = [PersistentMapping(d=os.urandom(40).hex()) for _ in range(min(1000, args.objects - start))]
            conn.root()[f"loads-{start}"] = batch
            objs.extend(batch)
    oids = [o._p_oid for o in objs]
    conn.close()
    db.close()

    storage = ClientStorage(args.addrs, args.storage, wait=True, wait_timeout=WAIT_TIMEOUT)
    try:
        rounds = []
        for _ in range(args.rounds):
            storage._cache.clear()
            server0 = proc_cpu_s(args.pids)
            cpu0, thread0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
            for oid in oids:
                storage.load(oid)
            wall = time.perf_counter() - t0
            cpu, thread = time.process_time() - cpu0, time.thread_time() - thread0
            server = proc_cpu_s(args.pids) - server0
            rounds.append((wall, cpu, thread, server))
    finally:
        storage.close()
    n = len(oids)
    print(f"{args.label}: {n} cold loads, one client, ClientStorage.load one at a time")
    for wall, cpu, thread, server in rounds:
        print(f"  {n / wall:,.0f} loads/s: {1e6 * wall / n:.1f} us per load; CPU per load: client"
              f" process {1e6 * cpu / n:.1f} us (application thread {1e6 * thread / n:.1f} us),"
              f" servers {1e6 * server / n:.1f} us")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("--addrs", type=addrs, required=True)
    w.add_argument("--storage", default="1")
    w.add_argument("--acks", required=True)
    w.add_argument("--stop", required=True, help="stop when this file exists")
    w.add_argument("--max-seconds", type=float, default=300)
    c = sub.add_parser("check")
    c.add_argument("--addrs", type=addrs, required=True)
    c.add_argument("--storage", default="1")
    c.add_argument("--acks", required=True)
    c.add_argument("--events", required=True)
    c.add_argument("--json")
    r = sub.add_parser("ratios")
    r.add_argument("results", nargs="+")
    ph = sub.add_parser("phases")
    ph.add_argument("--addrs", type=addrs, required=True)
    ph.add_argument("--storage", default="1")
    ph.add_argument("--seconds", type=float, default=6)
    ph.add_argument("--label", default="")
    ld = sub.add_parser("loads")
    ld.add_argument("--addrs", type=addrs, required=True)
    ld.add_argument("--storage", default="1")
    ld.add_argument("--objects", type=int, default=10000)
    ld.add_argument("--rounds", type=int, default=3)
    ld.add_argument("--pids", type=lambda t: [int(x) for x in t.split(",") if x], default=[])
    ld.add_argument("--label", default="")
    args = p.parse_args()
    return {"write": cmd_write, "check": cmd_check, "ratios": cmd_ratios,
            "phases": cmd_phases, "loads": cmd_loads}[args.cmd](args) or 0


if __name__ == "__main__":
    sys.exit(main())
