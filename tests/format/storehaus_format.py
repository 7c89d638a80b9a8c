#!/usr/bin/env python3
"""A reader and writer of StoreHaus's cache format that is not StoreHaus:
it follows docs/FORMAT.md and nothing else (Python 3 and the `msgpack`
package; Redis spoken by hand, PostgreSQL through `psql`).

    storehaus_format.py dump  REDIS_URL GLOBAL PREFIX ID...
        Prints, as JSON, every cached entry of the records ID... (home key
        and the side key of every registered version), the store's index
        entries, query generation and cached query results.

    storehaus_format.py write REDIS_URL GLOBAL PREFIX SQL ID...
        Runs SQL with psql (DATABASE_URL, PGOPTIONS from the environment),
        then invalidates as docs/FORMAT.md says a non-Rust writer must:
        DEL each record's home key and its side key for every tag in the
        store's registry, then bump the store's query generation.

tests/test_format.rs runs it (`cargo test --test test_format`).
"""

import json
import os
import random
import socket
import subprocess
import sys
from urllib.parse import urlparse

import msgpack

LEASE_TAG = 0xC1
LEASE_LEN = 17
SAFE = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


class Redis:
    """Just enough RESP2 for GET, DEL, SET, INCR, ZRANGE and SCAN."""

    def __init__(self, url):
        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=5)
        self.buf = self.sock.makefile("rb")

    def cmd(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self.reply()

    def reply(self):
        line = self.buf.readline()[:-2]
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.buf.read(n + 2)[:-2]
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")


def escape(segment):
    """An id or index value as it appears in a key: every byte outside
    [A-Za-z0-9_.-] (and % itself) as %XX, upper-case hex."""
    raw = str(segment).encode()
    return "".join(chr(b) if b in SAFE else "%%%02X" % b for b in raw)


def plain(value):
    """MessagePack as JSON: bytes become {"bin": hex}."""
    if isinstance(value, bytes):
        return {"bin": value.hex()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def decode(data):
    """One cache value, as docs/FORMAT.md describes it."""
    if data is None:
        return {"kind": "missing"}
    if len(data) == LEASE_LEN and data[0] == LEASE_TAG:
        return {"kind": "lease"}
    envelope = msgpack.unpackb(data, raw=False, strict_map_key=False)
    version = envelope[0]
    if version == 2:
        _, fingerprint, token, payload = envelope
    elif version == 1:
        (_, fingerprint, payload), token = envelope, None
    else:
        return {"kind": "newer", "version": version}
    return {
        "kind": "value",
        "version": version,
        "fingerprint": fingerprint,
        "token": token,
        "payload": plain(payload),
    }


def registry(r, glob, prefix):
    return [t.decode() for t in r.cmd("ZRANGE", f"{glob}:__versions:{prefix}", 0, -1)]


def scan(r, pattern):
    cursor, found = b"0", []
    while True:
        cursor, keys = r.cmd("SCAN", cursor, "MATCH", pattern, "COUNT", 500)
        found.extend(k.decode() for k in keys)
        if cursor == b"0":
            return sorted(found)


def dump(url, glob, prefix, ids):
    r = Redis(url)
    tags = registry(r, glob, prefix)
    records = {}
    for id_ in ids:
        home = f"{glob}:{prefix}:{escape(id_)}"
        records[id_] = {
            "key": home,
            "home": decode(r.cmd("GET", home)),
            "sides": {t: decode(r.cmd("GET", f"{home}~{t}")) for t in tags},
        }
    generation = r.cmd("GET", f"{glob}:{prefix}:query:gen")
    queries = {
        k: decode(r.cmd("GET", k))
        for k in scan(r, f"{glob}:{prefix}:query:*")
        if not k.endswith(":gen")
    }
    index = {k: decode(r.cmd("GET", k)) for k in scan(r, f"{glob}:{prefix}:idx:*")}
    print(
        json.dumps(
            {
                "registry": tags,
                "records": records,
                "generation": int(generation) if generation is not None else None,
                "queries": queries,
                "index": index,
            }
        )
    )


def write(url, glob, prefix, sql, ids):
    # The write: committed before anything is invalidated.
    dsn = os.environ["DATABASE_URL"]
    subprocess.run(["psql", dsn, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql], check=True)
    r = Redis(url)
    # Every record's home key, and its side key for each registered version.
    homes = [f"{glob}:{prefix}:{escape(i)}" for i in ids]
    tags = registry(r, glob, prefix)
    keys = homes + [f"{h}~{t}" for h in homes for t in tags]
    r.cmd("DEL", *keys)
    # The store's cached queries: bump the generation (a missing counter
    # starts at a random value, never at 1).
    generation = f"{glob}:{prefix}:query:gen"
    r.cmd("SET", generation, random.randint(1, 2**32), "NX")
    r.cmd("INCR", generation)
    print(json.dumps({"deleted": keys}))


def main(argv):
    if len(argv) >= 5 and argv[1] == "dump":
        dump(argv[2], argv[3], argv[4], argv[5:])
    elif len(argv) >= 6 and argv[1] == "write":
        write(argv[2], argv[3], argv[4], argv[5], argv[6:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
