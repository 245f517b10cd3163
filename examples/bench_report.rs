//! Writes `BENCHMARKS.md` from the last `cargo bench --bench check` run (criterion's
//! `target/criterion/*/*/new/estimates.json`) and the load-generator results that
//! `scripts/bench.sh` leaves in `target/bench/`. Run it through `scripts/bench.sh`.

use std::fmt::Write as _;
use std::path::Path;

const VARIANTS: [&str; 8] = [
    "bare",
    "decode_only",
    "layer_memory",
    "layer_memory_keyset",
    "layer_memory_jwks",
    "layer_cache_hit",
    "layer_mirror",
    "naive_pg",
];

fn median_ns(group: &str, name: &str) -> Option<f64> {
    let path = format!("target/criterion/{group}/{name}/new/estimates.json");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn human(ns: f64) -> String {
    if ns >= 1_000_000.0 {
        format!("{:.2} ms", ns / 1_000_000.0)
    } else if ns >= 1_000.0 {
        format!("{:.2} µs", ns / 1_000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    judged(a, b, None)
}

/// A ratio's target.
#[derive(Debug, Clone, Copy)]
enum Bound {
    AtMost(f64),
    AtLeast(f64),
}

/// `a / b` to three places, and whether it meets `bound`: every target a table names is
/// judged, so a missed one says so.
fn judged(a: Option<f64>, b: Option<f64>, bound: Option<Bound>) -> String {
    let (Some(a), Some(b)) = (a, b) else {
        return "n/a".into();
    };
    if b <= 0.0 {
        return "n/a".into();
    }
    let value = a / b;
    match bound {
        None => format!("{value:.3}"),
        Some(Bound::AtMost(bound)) if value <= bound => format!("{value:.3} (met)"),
        Some(Bound::AtLeast(bound)) if value >= bound => format!("{value:.3} (met)"),
        Some(_) => format!("{value:.3} **(missed)**"),
    }
}

/// A target per algorithm (`None`: no target for that one), and its text for the table.
#[derive(Clone, Copy)]
struct Target {
    bound: fn(&str) -> Option<Bound>,
    text: &'static str,
}

const NO_TARGET: Target = Target {
    bound: |_| None,
    text: "",
};

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn loadgen(name: &str) -> Vec<serde_json::Value> {
    let Ok(text) = std::fs::read_to_string(Path::new("target/bench").join(name)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// The `median_ns` of `variant` for `alg` in an interleaved comparison's JSON lines.
fn median_of(runs: &[serde_json::Value], alg: &str, variant: &str) -> Option<f64> {
    runs.iter()
        .find(|r| r["alg"] == alg && r["variant"] == variant)
        .and_then(|r| r["median_ns"].as_f64())
}

fn mean(runs: &[serde_json::Value], field: &str) -> Option<f64> {
    let values: Vec<f64> = runs.iter().filter_map(|r| r[field].as_f64()).collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Signature verification alone per crypto backend (`crypto_*` groups).
fn crypto(out: &mut String) {
    let _ = writeln!(
        out,
        "\nSignature verification alone (verifier built from the key, then verify, as \
         `jsonwebtoken::decode` does), per crypto backend (`crypto_*` groups):\n"
    );
    let _ = writeln!(
        out,
        "| algorithm | `aws_lc_rs` (default) | `rust_crypto` | rust_crypto / aws_lc_rs |\n|---|---|---|---|"
    );
    for alg in ["hs256", "rs256", "es256", "eddsa"] {
        let group = format!("crypto_{alg}");
        let (aws, rust) = (median_ns(&group, "aws_lc_rs"), median_ns(&group, "rust_crypto"));
        let cell = |v: Option<f64>| v.map(human).unwrap_or_else(|| "n/a".into());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            alg.to_uppercase().replace("EDDSA", "EdDSA"),
            cell(aws),
            cell(rust),
            ratio(rust, aws)
        );
    }
}

/// The interleaved comparison of key sources `benches/check.rs` leaves in
/// `target/bench/key_sources.jsonl`.
fn key_sources(out: &mut String) {
    let runs = loadgen("key_sources.jsonl");
    let median = |alg: &str, variant: &str| median_of(&runs, alg, variant);
    let _ = writeln!(
        out,
        "\nKey sources, the layer over `MemoryStore` with the same token (its header names the `kid`), \
         timed in interleaved batches in one process (medians of 300 batches each), so the machine's \
         slow spells hit all three alike:\n"
    );
    let _ = writeln!(out, "| key source | HS256 | ES256 |\n|---|---|---|");
    for variant in ["static_key", "static_key_set", "jwks"] {
        let cell = |alg| median(alg, variant).map(human).unwrap_or_else(|| "n/a".into());
        let _ = writeln!(out, "| `{variant}` | {} | {} |", cell("hs256"), cell("es256"));
    }
    let _ = writeln!(out, "\n| ratio | HS256 | ES256 | target |\n|---|---|---|---|");
    let rows = [
        (
            "`jwks / static_key_set`",
            "jwks",
            "static_key_set",
            Target {
                bound: |_| Some(Bound::AtMost(1.02)),
                text: "≤ 1.02 (a provider's key costs what a static one does)",
            },
        ),
        ("`jwks / static_key`", "jwks", "static_key", NO_TARGET),
    ];
    ratio_rows(out, &runs, &rows);
}

/// DPoP (`benches/dpop.rs`): a DPoP request (cached token, fresh ES256 proof) next to the same
/// layer's bearer request, decode-only and the proof's own check, from `target/bench/dpop.jsonl`.
fn dpop(out: &mut String) {
    let runs = loadgen("dpop.jsonl");
    let _ = writeln!(out, "\n## DPoP (RFC 9449)\n");
    if runs.is_empty() {
        let _ = writeln!(out, "Not run.");
        return;
    }
    let rounds = runs.first().and_then(|r| r["rounds"].as_u64()).unwrap_or(0);
    let _ = writeln!(
        out,
        "`cargo bench --bench dpop`: HS256 and ES256 access tokens, ES256 proofs signed before each \
         batch's clock starts, timed in interleaved batches in one process (medians of {rounds} \
         batches). `layer_bearer` and `layer_dpop` are one layer over `MemoryStore` with DPoP on \
         and its verified-token cache warm; `proof_only` verifies the request's proof and nothing \
         else (`dpop::verify_proof`: parse, key, thumbprint, signature), the floor of a DPoP \
         request.\n"
    );
    let _ = writeln!(out, "| variant | HS256 token | ES256 token |\n|---|---|---|");
    let median = |alg: &str, variant: &str| median_of(&runs, alg, variant);
    for variant in ["decode_only", "layer_bearer", "proof_only", "layer_dpop"] {
        let cell = |alg| median(alg, variant).map(human).unwrap_or_else(|| "n/a".into());
        let _ = writeln!(out, "| `{variant}` | {} | {} |", cell("hs256"), cell("es256"));
    }
    let above = |alg| match (median(alg, "layer_dpop"), median(alg, "proof_only")) {
        (Some(dpop), Some(proof)) => human(dpop - proof),
        _ => "n/a".into(),
    };
    let _ = writeln!(out, "\n| | HS256 token | ES256 token |\n|---|---|---|");
    let _ = writeln!(
        out,
        "| the layer's cost above the proof's check (`layer_dpop - proof_only`) | {} | {} |",
        above("hs256"),
        above("es256")
    );
    let ratios = [
        ("`layer_dpop / proof_only`", "layer_dpop", "proof_only"),
        ("`layer_dpop / layer_bearer`", "layer_dpop", "layer_bearer"),
        ("`layer_dpop / decode_only`", "layer_dpop", "decode_only"),
    ];
    for (label, a, b) in ratios {
        let _ = writeln!(
            out,
            "| {label} | {} | {} |",
            ratio(median("hs256", a), median("hs256", b)),
            ratio(median("es256", a), median("es256", b))
        );
    }
}

/// Writes one HS256/ES256 ratio row per `(label, a, b, target)`: `a`'s median over `b`'s in
/// `runs`, judged against the target.
fn ratio_rows(out: &mut String, runs: &[serde_json::Value], rows: &[(&str, &str, &str, Target)]) {
    for (label, a, b, target) in rows {
        let r = |alg| {
            judged(
                median_of(runs, alg, a),
                median_of(runs, alg, b),
                (target.bound)(alg),
            )
        };
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} |",
            r("hs256"),
            r("es256"),
            target.text
        );
    }
}

/// The per-request ratios with targets, from the interleaved comparison `benches/check.rs`
/// leaves in `target/bench/per_request.jsonl`.
fn per_request(out: &mut String) {
    let runs = loadgen("per_request.jsonl");
    let median = |alg: &str, variant: &str| median_of(&runs, alg, variant);
    let rounds = runs.first().and_then(|r| r["rounds"].as_u64()).unwrap_or(0);
    let _ = writeln!(
        out,
        "\nThe ratios, timed in interleaved batches in one process (medians of {rounds} batches of \
         about 2 ms each per variant, rotating the order each round), so the machine's slow spells \
         hit every variant alike (criterion's medians above come from runs one after another, which \
         on this machine differ by more than these ratios measure):\n"
    );
    let _ = writeln!(out, "| variant | HS256 | ES256 |\n|---|---|---|");
    for variant in [
        "decode_only",
        "layer_memory",
        "layer_cache_hit",
        "layer_mirror",
        "naive_pg",
    ] {
        let cell = |alg| {
            median(alg, variant)
                .map(human)
                .unwrap_or_else(|| "skipped".into())
        };
        let _ = writeln!(out, "| `{variant}` | {} | {} |", cell("hs256"), cell("es256"));
    }
    let hit = Target {
        bound: |alg| Some(Bound::AtMost(if alg == "hs256" { 1.10 } else { 1.02 })),
        text: "≤ 1.10 (HS256), ≤ 1.02 (ES256)",
    };
    let _ = writeln!(out, "\n| ratio | HS256 | ES256 | target |\n|---|---|---|---|");
    let rows = [
        (
            "`layer_memory / decode_only`",
            "layer_memory",
            "decode_only",
            NO_TARGET,
        ),
        (
            "`layer_cache_hit / decode_only`",
            "layer_cache_hit",
            "decode_only",
            hit,
        ),
        ("`layer_mirror / decode_only`", "layer_mirror", "decode_only", hit),
        (
            "`naive_pg / layer_cache_hit`",
            "naive_pg",
            "layer_cache_hit",
            Target {
                bound: |_| Some(Bound::AtLeast(10.0)),
                text: "≥ 10",
            },
        ),
    ];
    ratio_rows(out, &runs, &rows);
}

/// Mirror mode at 0, 1 M and 10 M live revocations on the demo, as `scripts/mirror_scale.py`
/// leaves it in `target/bench/mirror.jsonl`.
fn mirror_at_scale(out: &mut String) {
    let runs = loadgen("mirror.jsonl");
    let _ = writeln!(out, "\n## Mirror at scale\n");
    let Some(empty) = runs.iter().find(|r| r["live"] == 0) else {
        let _ = writeln!(
            out,
            "Not measured in this run (`scripts/mirror_scale.py` needs Postgres and psql)."
        );
        return;
    };
    let _ = writeln!(
        out,
        "`scripts/mirror_scale.py`: the release demo with `REVOCATION_CACHE=mirror` over a database \
         bulk-loaded with N live token revocations by plain SQL. *Ready* is process start to the first \
         `GET /readyz` 200 (mirror loaded, feed in sync); *RSS over empty* is VmRSS one second later \
         minus the empty mirror's ({} MiB); *peak* is VmHWM. 2 000 unrevoked tokens (new `jti`s) go \
         to `GET /me`, then 200 revoked ones; *lookups* is the cache's ledger lookups they caused. \
         Then the database refuses connections and every backend is terminated: a new unrevoked and \
         a new revoked token are sent every 0.2 s for 15 s (`max_staleness` is 10 s after the last \
         proof of sync, which is at most one 2 s heartbeat before the stop).\n",
        mib(&empty["rss_kib"])
    );
    let _ = writeln!(
        out,
        "| live | ready | RSS over empty | peak RSS | table | unrevoked: 200 / lookups | revoked: 401 / lookups | DB stopped: unrevoked 200 until, first 503 | revoked not 401 |\n|---|---|---|---|---|---|---|---|---|"
    );
    let int = |v: &serde_json::Value| v.as_i64().unwrap_or(-1);
    for run in &runs {
        let over = int(&run["rss_kib"]) - int(&empty["rss_kib"]);
        let _ = writeln!(
            out,
            "| {} | {:.2} s | {:.1} MiB | {} MiB | {:.1} MiB | {} / {} | {} / {} | {} s, {} s | {} |",
            int(&run["live"]),
            run["ready_s"].as_f64().unwrap_or(f64::NAN),
            over as f64 / 1024.0,
            mib(&run["peak_rss_kib"]),
            int(&run["mirror_bytes"]) as f64 / 1048576.0,
            int(&run["unrevoked_ok"]),
            int(&run["unrevoked_lookups"]),
            int(&run["revoked_401"]),
            int(&run["revoked_lookups"]),
            run["outage_unrevoked_200_until_s"],
            run["outage_first_503_s"],
            int(&run["outage_revoked_not_401"]),
        );
    }
    let _ = writeln!(
        out,
        "\nTargets (issue 15): 1 000 000 live revocations in sync within 3 s of start, at most 64 MB more \
         resident memory than an empty mirror, zero ledger lookups for unrevoked tokens, and with the \
         database stopped unrevoked tokens 200 and revoked ones 401 until `max_staleness`. A revoked \
         token costs one lookup the first time (its fingerprint is confirmed with the ledger), and is \
         answered 401 from the fingerprint alone while the ledger is unreachable."
    );
    let Some(million) = runs.iter().find(|r| r["live"] == 1_000_000) else {
        return;
    };
    let verdict = |met: bool| if met { "met" } else { "**missed**" };
    let over_bytes = (int(&million["rss_kib"]) - int(&empty["rss_kib"])) * 1024;
    let _ = writeln!(
        out,
        "\nAt 1 000 000 in this run: in sync within 3 s {}, at most 64 MB more memory {}, no lookup \
         for unrevoked tokens {}, every revoked token 401 with the database stopped {}.",
        verdict(million["ready_s"].as_f64().is_some_and(|s| s <= 3.0)),
        verdict(over_bytes <= 64_000_000),
        verdict(int(&million["unrevoked_lookups"]) == 0),
        verdict(int(&million["outage_revoked_not_401"]) == 0),
    );
}

/// The simulated fleets `examples/fleet.rs` leaves in `target/bench/fleet-{feed}-{n}.jsonl`.
fn fleets(out: &mut String) {
    let mut runs: Vec<serde_json::Value> = std::fs::read_dir("target/bench")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("fleet-"))
        .flat_map(|entry| loadgen(&entry.file_name().to_string_lossy()))
        .collect();
    let _ = writeln!(out, "\n## Fleets: the NATS feed next to the Postgres feed\n");
    if runs.is_empty() {
        let _ = writeln!(
            out,
            "Not measured in this run (`examples/fleet.rs` needs Postgres and nats-server)."
        );
        return;
    }
    runs.sort_by_key(|r| {
        (
            r["feed"].as_str().unwrap_or_default().to_owned(),
            r["instances"].as_u64(),
        )
    });
    let _ = writeln!(
        out,
        "`cargo run --release --example fleet -- FEED N K` (from `scripts/bench.sh`): N instances in one \
         process (`MokaCache` in mirror mode; `nats`: each `MokaCache<NatsLedger>` with its own push \
         consumer over 8 shared NATS connections, one relay, a `nats-server -js` on loopback; `postgres`: \
         each `MokaCache<PgStore>` with its own pool and `LISTEN` connection), one Postgres with \
         `max_connections = 100`, everything on this 2-core machine. K revocations are written by plain \
         SQL in transactions of 1 000; *all everywhere* is until every instance applied all K, and *last \
         applied p50 / p99* the same per instance. Then 20 single revocations, one at a time on the quiet \
         fleet: *single p50 / p99* is each instance's propagation lag for each (applied minus \
         `revoked_at`). *Connections* are the fleet's Postgres connections once in sync and once idle.\n"
    );
    let _ = writeln!(
        out,
        "| feed | N | in sync | K | all everywhere | last applied p50 / p99 | single p50 / p99 | connections in sync, idle |\n|---|---|---|---|---|---|---|---|"
    );
    let secs = |v: &serde_json::Value| v.as_f64().map_or_else(|| "n/a".into(), |s| format!("{s:.2} s"));
    let ms = |v: &serde_json::Value| v.as_f64().map_or_else(|| "n/a".into(), |s| format!("{s:.0} ms"));
    for run in &runs {
        let int = |name: &str| run[name].as_i64().map_or_else(|| "n/a".into(), |n| n.to_string());
        if let Some(error) = run["error"].as_str() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | failed: {error} | | | {} |",
                run["feed"].as_str().unwrap_or_default(),
                int("instances"),
                int("instances_in_sync"),
                int("revocations"),
                int("postgres_connections_in_sync"),
            );
            continue;
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} / {} | {} / {} | {}, {} |",
            run["feed"].as_str().unwrap_or_default(),
            int("instances"),
            int("instances_in_sync"),
            int("revocations"),
            secs(&run["all_applied_everywhere_s"]),
            secs(&run["last_event_applied_p50_s"]),
            secs(&run["last_event_applied_p99_s"]),
            ms(&run["single_logout_p50_ms"]),
            ms(&run["single_logout_p99_ms"]),
            int("postgres_connections_in_sync"),
            int("postgres_connections_idle"),
        );
    }
    let _ = writeln!(
        out,
        "\nTargets (issue 25) this in-process fleet speaks to: Postgres connections once idle, the relays' \
         alone (the NATS rows' idle count is the relay's feed and pool); the Postgres feed's connections \
         grow with the fleet until the database refuses them. The same targets across separate \
         processes follow."
    );
    fleet_processes(out);
}

/// The fleet of demo processes `examples/fleet_demo.rs` leaves in
/// `target/bench/fleet_demo-{n}.jsonl`, judged against issue 25's targets.
fn fleet_processes(out: &mut String) {
    let runs = loadgen("fleet_demo-40.jsonl");
    let _ = writeln!(out, "\n### 40 demo processes and 2 relays\n");
    let Some(run) = runs.first() else {
        let _ = writeln!(
            out,
            "Not measured in this run (`examples/fleet_demo.rs` needs Postgres and nats-server)."
        );
        return;
    };
    let int = |name: &str| run[name].as_i64().unwrap_or(-1);
    let float = |name: &str| run[name].as_f64().unwrap_or(f64::NAN);
    let verdict = |met: bool| if met { "met" } else { "**missed**" };
    let _ = writeln!(
        out,
        "`target/release/examples/fleet_demo 40` (from `scripts/bench.sh`): 40 `examples/server.rs` \
         processes (`REVOCATION_FEED=nats`, mirror mode, `DATABASE_IDLE_TIMEOUT_SECS={idle}`) and 2 \
         `examples/relay.rs` processes on one Postgres (`max_connections = {max}`) and one `nats-server -js`, \
         all on this 2-core machine. Each logout is taken by one instance after the token was used on \
         all 40; every other instance is polled every 2 ms over its own connection until it answers \
         401, timed from sending the logout. A plain-SQL `INSERT INTO jwt_revocations` is timed the \
         same way from its commit. Connections are counted by `application_name`.\n\n\
         | measure | value | target | |\n|---|---|---|---|\n\
         | instances ready | {ready} of 40 in {ready_s:.1} s | all | {ready_ok} |\n\
         | Postgres connections, instances, once ready | {held_ready} (at most {held_ready_max} each) | | |\n\
         | Postgres connections, instances, after {wait} s without traffic | {held_idle}, of which {not_purging} not purging | none | {idle_ok} |\n\
         | Postgres connections, relays | at most {relay_ready} each ready, {relay_idle} idle | at most 2 each | {relays_ok} |\n\
         | logout refused by every other instance | p50 {lp50:.0} ms, p99 {lp99:.0} ms, max {lmax:.0} ms ({samples} samples) | p99 50 ms | {logout_ok} |\n\
         | of which the logout request itself (its commit) | p50 {rp50:.0} ms, max {rmax:.0} ms | | |\n\
         | plain-SQL revocation refused everywhere | p50 {sp50:.0} ms, max {smax:.0} ms ({sql} samples) | within 1 s | {sql_ok} |\n\
         | instances that never refused in 10 s | {missed} | 0 | {missed_ok} |\n\n\
         A connection open after the quiet period whose last statement was a purge's is a purger at \
         work: each demo purges revocations and sessions every 10 minutes, its first run at a random \
         moment of the first 10 minutes; *none* counts the others. Demo connections idle for more \
         than twice the timeout (the pool's reaper runs once per timeout): {stale}.",
        idle = int("idle_timeout_s"),
        max = run["max_connections"].as_str().unwrap_or("?"),
        ready = int("ready"),
        ready_s = float("ready_s"),
        ready_ok = verdict(int("ready") == 40),
        held_ready = int("instances_connections_ready"),
        held_ready_max = int("instance_connections_ready_max"),
        wait = 2 * int("idle_timeout_s") + 2,
        held_idle = int("instances_connections_idle"),
        not_purging = int("instances_connections_idle_not_purging"),
        idle_ok = verdict(
            int("instances_connections_idle_not_purging") == 0
                && int("instances_connections_idle_past_2x_timeout") == 0
        ),
        stale = int("instances_connections_idle_past_2x_timeout"),
        relay_ready = int("relay_connections_ready_max"),
        relay_idle = int("relay_connections_idle_max"),
        relays_ok = verdict(int("relay_connections_ready_max").max(int("relay_connections_idle_max")) <= 2),
        lp50 = float("logout_p50_ms"),
        lp99 = float("logout_p99_ms"),
        lmax = float("logout_max_ms"),
        samples = int("logout_samples"),
        rp50 = float("logout_request_p50_ms"),
        rmax = float("logout_request_max_ms"),
        logout_ok = verdict(float("logout_p99_ms") <= 50.0),
        sp50 = float("sql_p50_ms"),
        smax = float("sql_max_ms"),
        sql = int("sql_samples"),
        sql_ok = verdict(float("sql_max_ms") <= 1000.0),
        missed = int("missed"),
        missed_ok = verdict(int("missed") == 0),
    );
}

fn mib(kib: &serde_json::Value) -> String {
    format!("{:.1}", kib.as_f64().unwrap_or(f64::NAN) / 1024.0)
}

/// The comparison with jwt-authorizer and the verified-token cache's cold and warm paths that
/// `benches/peer` leaves in `target/bench/peer.jsonl`.
fn peer(out: &mut String) {
    let runs = loadgen("peer.jsonl");
    if runs.is_empty() {
        let _ = writeln!(out, "\nThe peer comparison (`benches/peer`) was not run.");
        return;
    }
    let algs = ["hs256", "rs256", "es256", "eddsa"];
    let median = |alg: &str, variant: &str| median_of(&runs, alg, variant);
    let field = |alg: &str, name: &str| {
        runs.iter()
            .find(|r| r["alg"] == alg && r[name].is_number())
            .and_then(|r| r[name].as_f64())
    };
    let _ = writeln!(
        out,
        "\n## Next to jwt-authorizer, and the verified-token cache\n\n\
         `benches/peer` (a crate of its own: `cargo bench --manifest-path benches/peer/Cargo.toml`), \
         one process: each variant serves requests through `ready().call()` to the same inner \
         service with the same 11-claim token shape, timed in interleaved batches (medians of 200 \
         batches each). This crate with its default features (aws-lc) over `MemoryStore` holding \
         10 000 revocations, so the revocation check is included; jwt-authorizer 0.15 (jsonwebtoken \
         9 with ring) checks no revocation. `layer_cold`: the cache on, every token new (none is \
         ever seen twice); `layer_warm`: tokens seen before.\n"
    );
    let _ = writeln!(
        out,
        "| variant | HS256 | RS256 | ES256 | EdDSA |\n|---|---|---|---|---|"
    );
    for variant in [
        "jwt_authorizer",
        "decode_only",
        "layer_uncached",
        "layer_cold",
        "layer_warm",
    ] {
        let cells: Vec<String> = algs
            .iter()
            .map(|alg| median(alg, variant).map(human).unwrap_or_else(|| "n/a".into()))
            .collect();
        let _ = writeln!(out, "| `{variant}` | {} |", cells.join(" | "));
    }
    let _ = writeln!(
        out,
        "\n| ratio | HS256 | RS256 | ES256 | EdDSA | target |\n|---|---|---|---|---|---|"
    );
    for (label, a, b, target) in [
        (
            "`layer_warm / decode_only`",
            "layer_warm",
            "decode_only",
            Target {
                bound: |alg| match alg {
                    "hs256" => Some(Bound::AtMost(0.25)),
                    "es256" | "rs256" => Some(Bound::AtMost(0.02)),
                    _ => None,
                },
                text: "≤ 0.25 (HS256), ≤ 0.02 (ES256, RS256)",
            },
        ),
        (
            "`layer_cold / decode_only`",
            "layer_cold",
            "decode_only",
            Target {
                bound: |_| Some(Bound::AtMost(1.03)),
                text: "≤ 1.03",
            },
        ),
        (
            "`layer_cold / layer_uncached`",
            "layer_cold",
            "layer_uncached",
            Target {
                text: "what a miss costs",
                ..NO_TARGET
            },
        ),
        (
            "`layer_uncached / decode_only`",
            "layer_uncached",
            "decode_only",
            NO_TARGET,
        ),
        (
            "`layer_cold / jwt_authorizer`",
            "layer_cold",
            "jwt_authorizer",
            Target {
                bound: |alg| (alg == "es256").then_some(Bound::AtMost(1.0)),
                text: "≤ 1.0 (ES256, default features)",
            },
        ),
        (
            "`layer_warm / jwt_authorizer`",
            "layer_warm",
            "jwt_authorizer",
            NO_TARGET,
        ),
    ] {
        let cells: Vec<String> = algs
            .iter()
            .map(|alg| judged(median(alg, a), median(alg, b), (target.bound)(alg)))
            .collect();
        let _ = writeln!(out, "| {label} | {} | {} |", cells.join(" | "), target.text);
    }
    let rate = |alg: &str, name: &str| {
        field(alg, name).map_or_else(|| "n/a".into(), |r| format!("{:.2} %", r * 100.0))
    };
    let _ = writeln!(
        out,
        "\nCache hit rates in that run: `layer_cold` {} (HS256), {} (RS256), {} (ES256), {} (EdDSA); \
         `layer_warm` {}, {}, {}, {} (its first request per token is a miss).",
        rate("hs256", "hit_rate_cold"),
        rate("rs256", "hit_rate_cold"),
        rate("es256", "hit_rate_cold"),
        rate("eddsa", "hit_rate_cold"),
        rate("hs256", "hit_rate_warm"),
        rate("rs256", "hit_rate_warm"),
        rate("es256", "hit_rate_warm"),
        rate("eddsa", "hit_rate_warm"),
    );
    let scaling =
        |alg: &str, name: &str| field(alg, name).map_or_else(|| "n/a".into(), |r| format!("{r:.2}"));
    let _ = writeln!(
        out,
        "\nTwo threads at once against one (requests/s of two threads ÷ of one, each thread its own \
         runtime and service clone, medians of five rounds): warm hits of one token {} (HS256), {} \
         (ES256); decode-only, which shares nothing, {} and {}. A hit takes no lock, but two cores \
         serving the same token both write the claims' reference count and the layer's counters: \
         what the gap between the two scalings costs.",
        scaling("hs256", "two_thread_scaling_warm"),
        scaling("es256", "two_thread_scaling_warm"),
        scaling("hs256", "two_thread_scaling_decode_only"),
        scaling("es256", "two_thread_scaling_decode_only"),
    );
}

fn main() {
    let mut out = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Generated by `scripts/bench.sh` (which runs `cargo bench --bench check` and `benches/peer`, then the demo server"
    );
    let _ = writeln!(
        out,
        "under `examples/loadgen.rs`, then `cargo run --release --example bench_report`).\n"
    );
    let _ = writeln!(out, "- Machine: {} cores, {cpu}", command_output("nproc", &[]));
    let _ = writeln!(out, "- Toolchain: {}", command_output("rustc", &["--version"]));
    let _ = writeln!(
        out,
        "- Date: {}\n",
        command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    );
    let _ = writeln!(out, "## Per request\n");
    let _ = writeln!(
        out,
        "One request through a tower service stack; the inner service answers at once. Token: 11 claims. \
         Criterion medians, each variant in a run of its own, one after another: absolute times only \
         (no ratio of two of them is reported, see below).\n"
    );
    let _ = writeln!(out, "| variant | HS256 | ES256 |\n|---|---|---|");
    for variant in VARIANTS {
        let cell = |g| {
            median_ns(g, variant)
                .map(human)
                .unwrap_or_else(|| "skipped".into())
        };
        let _ = writeln!(
            out,
            "| `{variant}` | {} | {} |",
            cell("check_hs256"),
            cell("check_es256")
        );
    }
    per_request(&mut out);
    key_sources(&mut out);
    dpop(&mut out);
    crypto(&mut out);
    peer(&mut out);
    let _ = writeln!(
        out,
        "\nThe backends' synchronous fast path alone (`try_check` group; `_keyed`: the same token \
         from a layer that keys revocations by issuer):\n"
    );
    let _ = writeln!(out, "| backend | median |\n|---|---|");
    for name in [
        "memory",
        "memory_keyed",
        "cache_lookup",
        "cache_lookup_keyed",
        "cache_mirror",
        "cache_mirror_keyed",
    ] {
        let cell = median_ns("try_check", name)
            .map(human)
            .unwrap_or_else(|| "skipped".into());
        let _ = writeln!(out, "| `{name}` | {cell} |");
    }

    let _ = writeln!(
        out,
        "\n## End to end (loadgen against the demo server, loopback)\n"
    );
    let layered = loadgen("loadgen-layer.jsonl");
    let baseline = loadgen("loadgen-baseline.jsonl");
    let layered_zipf = loadgen("loadgen-layer-zipf.jsonl");
    let baseline_zipf = loadgen("loadgen-baseline-zipf.jsonl");
    let layered_es = loadgen("loadgen-layer-es256.jsonl");
    let baseline_es = loadgen("loadgen-baseline-es256.jsonl");
    let layered_es_zipf = loadgen("loadgen-layer-es256-zipf.jsonl");
    let baseline_es_zipf = loadgen("loadgen-baseline-es256-zipf.jsonl");
    if layered.is_empty() || baseline.is_empty() {
        let _ = writeln!(out, "Not run.");
    } else {
        let store = std::fs::read_to_string("target/bench/store.txt").unwrap_or_default();
        let _ = writeln!(
            out,
            "Demo server ({}) and load generator share the machine; runs alternate between the routes.\n",
            store.trim()
        );
        let _ = writeln!(
            out,
            "| route | runs | req/s (mean) | p50 µs | p99 µs |\n|---|---|---|---|---|"
        );
        for (route, runs) in [
            ("`/me` (layer), one hot token", &layered),
            ("`/baseline/me` (decode only), one hot token", &baseline),
            ("`/me` (layer), 10 000 subjects, Zipf", &layered_zipf),
            (
                "`/baseline/me` (decode only), 10 000 subjects, Zipf",
                &baseline_zipf,
            ),
            ("ES256 `/me` (layer), one hot token", &layered_es),
            ("ES256 `/baseline/me` (decode only), one hot token", &baseline_es),
            ("ES256 `/me` (layer), 10 000 subjects, Zipf", &layered_es_zipf),
            (
                "ES256 `/baseline/me` (decode only), 10 000 subjects, Zipf",
                &baseline_es_zipf,
            ),
        ] {
            if runs.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "| {route} | {} | {:.0} | {:.0} | {:.0} |",
                runs.len(),
                mean(runs, "rps").unwrap_or(0.0),
                mean(runs, "p50_us").unwrap_or(0.0),
                mean(runs, "p99_us").unwrap_or(0.0)
            );
        }
        let _ = writeln!(
            out,
            "\nThroughput ratio layer / decode-only: **{}** with one hot token (target ≥ 0.95), \
             **{}** with 10 000 subjects each reusing its token, Zipf-distributed (`--subjects 10000`; no target). \
             HS256 verification is a few microseconds of a request's tens, so the verified-token \
             cache can win back little of it end to end.",
            judged(
                mean(&layered, "rps"),
                mean(&baseline, "rps"),
                Some(Bound::AtLeast(0.95))
            ),
            ratio(mean(&layered_zipf, "rps"), mean(&baseline_zipf, "rps"))
        );
        if !layered_es.is_empty() && !baseline_es.is_empty() {
            let _ = writeln!(
                out,
                "\nES256, as identity providers sign (the demo verifying with a JWKS served on loopback, \
                 `loadgen --mint-es256`): layer / decode-only **{}** with one hot token, **{}** with \
                 10 000 subjects, Zipf (target ≥ 1.3 for both).",
                judged(
                    mean(&layered_es, "rps"),
                    mean(&baseline_es, "rps"),
                    Some(Bound::AtLeast(1.3))
                ),
                judged(
                    mean(&layered_es_zipf, "rps"),
                    mean(&baseline_es_zipf, "rps"),
                    Some(Bound::AtLeast(1.3))
                )
            );
        }
    }
    mirror_at_scale(&mut out);
    fleets(&mut out);
    std::fs::write("BENCHMARKS.md", out).expect("BENCHMARKS.md is writable");
    println!("wrote BENCHMARKS.md");
}
