#!/usr/bin/env python3
"""Writes the seed inputs of the `server_core` fuzz target into fuzz/seeds/server_core/.

    python3 fuzz/server_core_seeds.py

Each seed is a setup byte and a list of operations in the encoding `fuzz_targets/server_core.rs`
reads (the opcode is the first byte of an operation, modulo 20). They start the fuzzer from
inputs that reach what random bytes rarely do: commits that a primary accepts, a partition and
its healing, a wiped server that recovers by checkpoint, forged ring payloads, and the operator
requests. Which server the warm-up elects is not assumed: requests go to every server.
"""

import os

SERVERS = 4
here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, "seeds", "server_core")


def hop(n=63):
    return bytes([0, n])


def advance(ms_code):
    return bytes([4, ms_code])


def commit(server, client, request, oid, data):
    # One record (kind byte 0x20: a small oid, a state of up to 64 bytes, no expected serial),
    # tid chosen by the primary, empty metadata, time 0.
    return (
        bytes([11, server, client, request, 1, 0x20, oid, len(data)])
        + data
        + bytes([0, 0, 0, 0, 0, 0])
    )


def commits_to_all(client, request, oid, data):
    return b"".join(commit(s, client, request, oid, data) for s in range(SERVERS))


def settle(hops=6):
    return (hop() + advance(2)) * hops


def writes(n, client=1, start=0):
    b = b""
    for k in range(n):
        b += commits_to_all(client, start + k, k % 8, b"v%d" % k) + settle(3)
    return b


def request(kind, server, body=b""):
    # Opcode 13: the kind byte is taken modulo 6, plus one.
    return bytes([13, kind - 1, server]) + body


seeds = {}

seeds["commits"] = bytes([0]) + writes(8)

# A token timeout and a membership round pass in steps of about 100 ms (a single jump would
# fire every timer at once and leave no time for the new rings to form).
apart = (advance(0x40 | 0x06) + settle(4)) * 10
seeds["partition"] = (
    bytes([0])
    + writes(3)
    + bytes([10, 0b0011])  # servers 0 and 1 apart from 2 and 3
    + apart
    + writes(3, start=10)
    + bytes([10, 0])
    + apart
    + writes(2, start=20)
)

# Sixteen commits (beyond `checkpoint_after`), then server 2 loses its disk and restarts.
seeds["wipe"] = (
    bytes([0]) + writes(16) + bytes([17, 0x22]) + (settle(10) + advance(0x40 | 0x20)) * 6
)

forge = b""
for k, mode in enumerate([0x00, 0x01, 0x02, 0x03, 0x43, 0x21, 0x12]):
    body = {
        0: bytes([0, 4]) + b"\x01\x02\x03\x04",  # replica channel, arbitrary bytes
        1: bytes([0]) + bytes(range(11)),  # the packet's own message, one edit
        2: bytes([1, 0, 7, 5]) + b"chunk",  # a checkpoint chunk
        3: bytes([k]) + (bytes(range(11)) if mode & 0x40 else b""),  # replayed, maybe edited
    }[mode & 3]
    forge += bytes([8, k, 0, mode]) + body + hop(8)
seeds["forge"] = bytes([0]) + writes(2) + forge + settle(4) + writes(2, start=5)

seeds["cold"] = (
    bytes([1])
    + bytes([7, 0, 16]) + b"\x42\x53\x01\x01" + bytes(12)
    + (hop() + advance(5)) * 20
    + bytes([6]) * 10
    + writes(2)
)

ops = b""
for s in range(SERVERS):
    # Add server 5 ("added", client and admin at h:1) as client 1, request 1.
    ops += request(2, s, bytes([0, 5, 5]) + b"added" + bytes([0, 0, 1, 0, 1]))
    ops += request(3, s, bytes([1, 3, 1, 1, 0]))  # voters: add s3 (weight 1), remove s0
    ops += request(4, s, bytes([2]))  # swap to s2
    ops += request(5, s, bytes([3]))  # read
    ops += request(6, s)  # status
    ops += settle(3)
ops += request(2, 0, bytes([1, 5, 2, 0, 2]))  # remove server 5 (client 2, request 2)
seeds["requests"] = bytes([0]) + writes(2) + ops + settle(10)

os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
    print(f"{name}: {len(data)} bytes")
