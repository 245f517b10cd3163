#!/usr/bin/env python3
"""Mirror mode at scale, measured on the demo server (issue 15's targets).

For each live-set size N (default 0, 1 000 000 and 10 000 000 token revocations) this:

1. creates a database, lets the demo migrate it, and bulk-loads N revocations by plain SQL
   (triggers off: no NOTIFY storm; `seq` still comes from the column default);
2. starts `target/release/examples/server` with `REVOCATION_CACHE=mirror` and times its start
   until `GET /readyz` answers 200 (the mirror loaded and the feed in sync);
3. reads its resident memory (VmRSS, and the peak VmHWM) from /proc;
4. sends 2 000 unrevoked tokens and 200 revoked ones to `GET /me`, and reads the ledger lookups
   the cache made (`jwt_revocation_cache_ledger_lookups_total`) before and after: the unrevoked
   ones must cost none;
5. stops the database for the demo (`ALLOW_CONNECTIONS false` and every backend terminated) and
   keeps asking, with a new unrevoked and a new revoked token each time, until 15 s after:
   unrevoked tokens must answer 200 until `max_staleness` (10 s after the last proof of sync),
   then 503 (the closed failure policy); revoked ones 401 throughout.

One JSON line per N goes to target/bench/mirror.jsonl (bench_report turns it into a table); it
exits non-zero if a target's condition (not its timing) fails. Needs Postgres (DATABASE_URL or
127.0.0.1:5432, a superuser) and psql.

Usage: scripts/mirror_scale.py [N ...]
"""

import base64
import hashlib
import hmac
import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

ADMIN_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
SECRET = "mirror-scale-secret-mirror-scale"
PORT = 39881
SERVER = "target/release/examples/server"
OUT = "target/bench/mirror.jsonl"
MAX_STALENESS_S = 10.0


def psql(sql, database=None):
    url = ADMIN_URL if database is None else ADMIN_URL.rsplit("/", 1)[0] + "/" + database
    return subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql], check=True, capture_output=True, text=True
    ).stdout.strip()


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(jti, sub, iat=None):
    now = int(time.time())
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"jti": jti, "sub": sub, "iat": iat if iat is not None else now, "exp": now + 900}
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(SECRET.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


def get(path, token=None, timeout=5):
    request = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None, ""


def metric(text, name):
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"^{name}(\{{.*\}})? ", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def memory(pid):
    status = open(f"/proc/{pid}/status").read()
    kib = lambda field: int(re.search(rf"^{field}:\s+(\d+) kB", status, re.M).group(1))
    return kib("VmRSS"), kib("VmHWM")


def start_server(database, mode, log):
    env = dict(
        os.environ,
        DATABASE_URL=ADMIN_URL.rsplit("/", 1)[0] + "/" + database,
        REVOCATION_CACHE=mode,
        JWT_SECRET=SECRET,
        BIND_ADDR=f"127.0.0.1:{PORT}",
        RUST_LOG="info",
    )
    env.pop("DATABASE_DIRECT_URL", None)
    started = time.monotonic()
    server = subprocess.Popen([SERVER], env=env, stdout=log, stderr=log)
    deadline = started + 600
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the demo exited with {server.returncode}")
        if get("/readyz", timeout=1)[0] == 200:
            return server, time.monotonic() - started
        time.sleep(0.01)
    server.kill()
    raise RuntimeError("the demo never became ready")


def stop(server):
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def measure(n):
    database = f"jwt_mirror_scale_{n}"
    psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    psql(f'CREATE DATABASE "{database}"')
    os.makedirs("target/bench", exist_ok=True)
    log = open(f"target/bench/mirror-{n}.log", "w")
    try:
        server, _ = start_server(database, "lookup", log)  # migrates
        stop(server)
        started = time.monotonic()
        if n:
            psql(
                "SET session_replication_role = replica; "
                "INSERT INTO jwt_revocations (jti, subject, expires_at) "
                f"SELECT 'scale-' || i, 'user-' || (i % 100000), now() + interval '2 hours' "
                f"FROM generate_series(1, {n}) i; ANALYZE jwt_revocations",
                database,
            )
        load_s = time.monotonic() - started
        server, ready_s = start_server(database, "mirror", log)
        try:
            return probe(server, database, n, ready_s, load_s)
        finally:
            psql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
            stop(server)
    finally:
        log.close()
        psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def probe(server, database, n, ready_s, load_s):
    time.sleep(1)  # let the allocator return the snapshot's pages
    rss_kib, peak_kib = memory(server.pid)
    text = get("/metrics")[1]
    result = {
        "live": n,
        "bulk_load_s": round(load_s, 2),
        "ready_s": round(ready_s, 3),
        "rss_kib": rss_kib,
        "peak_rss_kib": peak_kib,
        "mirroring": metric(text, "jwt_revocation_cache_mirroring") == 1,
        "mirror_entries": int(metric(text, "jwt_revocation_mirror_entries")),
        "mirror_bytes": int(metric(text, "jwt_revocation_mirror_bytes")),
    }
    lookups = lambda: metric(get("/metrics")[1], "jwt_revocation_cache_ledger_lookups_total")
    before = lookups()
    run = random.getrandbits(32)
    statuses = [get("/me", mint(f"fresh-{run}-{i}", f"user-{i}"))[0] for i in range(2000)]
    result["unrevoked_ok"] = statuses.count(200)
    result["unrevoked_lookups"] = int(lookups() - before)
    revoked = random.sample(range(1, n + 1), min(200, n)) if n else []
    before = lookups()
    statuses = [get("/me", mint(f"scale-{i}", f"user-{i % 100000}"))[0] for i in revoked]
    result["revoked_checked"] = len(revoked)
    result["revoked_401"] = statuses.count(401)
    result["revoked_lookups"] = int(lookups() - before)

    psql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    psql(f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{database}'")
    stopped = time.monotonic()
    served, first_503, revoked_wrong, i = None, None, 0, 0
    while time.monotonic() - stopped < MAX_STALENESS_S + 5:
        i += 1
        status = get("/me", mint(f"outage-{run}-{i}", f"user-{i}"))[0]
        at = time.monotonic() - stopped
        if status == 200 and first_503 is None:
            served = at
        elif status == 503 and first_503 is None:
            first_503 = at
        if revoked:
            jti = random.randint(1, n)
            if get("/me", mint(f"scale-{jti}", f"user-{jti % 100000}"))[0] != 401:
                revoked_wrong += 1
        time.sleep(0.2)
    result["outage_unrevoked_200_until_s"] = round(served, 1) if served is not None else None
    result["outage_first_503_s"] = round(first_503, 1) if first_503 is not None else None
    result["outage_revoked_not_401"] = revoked_wrong
    return result


def main():
    sizes = [int(arg) for arg in sys.argv[1:]] or [0, 1_000_000, 10_000_000]
    if 0 not in sizes:
        sizes.insert(0, 0)  # the empty mirror every other size is compared with
    results = []
    for n in sizes:
        result = measure(n)
        print(json.dumps(result), flush=True)
        results.append(result)
    with open(OUT, "w") as out:
        for result in results:
            out.write(json.dumps(result) + "\n")
    failed = [
        r["live"]
        for r in results
        if not r["mirroring"]
        or r["unrevoked_ok"] != 2000
        or r["unrevoked_lookups"] != 0
        or r["revoked_401"] != r["revoked_checked"]
        or r["outage_revoked_not_401"] != 0
        or r["outage_first_503_s"] is None
        or (r["outage_unrevoked_200_until_s"] or 0) < 5
    ]
    if failed:
        sys.exit(f"mirror_scale: a condition failed for {failed}")


if __name__ == "__main__":
    main()
