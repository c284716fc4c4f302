"""A ZODB program against a Standby cluster, as any ZODB application would use it: a stock
ZEO ClientStorage given every server's ZEO address lands on the primary; a read-only
client on another server sees the commit through its invalidations.

    python scripts/zodb-demo.py --writable 127.0.0.1:7820,127.0.0.1:7821,127.0.0.1:7822 \
        --read-only 127.0.0.1:7831
"""

import argparse
import time

import transaction
import ZODB
from BTrees.OOBTree import OOBTree
from ZEO.ClientStorage import ClientStorage


def addrs(text):
    out = []
    for a in text.split(","):
        host, port = a.rsplit(":", 1)
        out.append((host, int(port)))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--writable", required=True, type=addrs)
    p.add_argument("--read-only", required=True, type=addrs)
    args = p.parse_args()

    db = ZODB.DB(ClientStorage(args.writable, wait_timeout=30))
    ro = ZODB.DB(ClientStorage(args.read_only, read_only=True, wait_timeout=30))
    ro_conn = ro.open()
    with db.transaction("demo: a catalogue") as conn:
        root = conn.root()
        if "books" not in root:
            root["books"] = OOBTree()
        books = root["books"]
        n = len(books)
        for i in range(n, n + 100):
            books[f"isbn-{i:05}"] = {"title": f"Book {i}", "copies": i % 7}
    print(f"zodb: committed 100 books through {db.storage.getName()}"
          f" (last tid {db.lastTransaction().hex()})")
    # The read-only client on another server: a new transaction sees the commit once its
    # server applied it (invalidations bring the client's view forward).
    deadline = time.monotonic() + 10
    while True:
        ro_conn.transaction_manager.begin()
        books = ro_conn.root().get("books")
        if books is not None and len(books) >= n + 100:
            break
        if time.monotonic() > deadline:
            raise SystemExit("zodb: the read-only client did not see the commit in 10 s")
        time.sleep(0.05)
    print(f"zodb: a read-only client on {args.read_only[0][0]}:{args.read_only[0][1]} reads"
          f" {len(books)} books, e.g. {books['isbn-00042']}")
    ro_conn.close()
    ro.close()
    db.close()


if __name__ == "__main__":
    main()
