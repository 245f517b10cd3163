//! A small HTTP load generator for the demo server, loopback only.
//!
//! ```text
//! cargo run --release --example loadgen -- --url http://127.0.0.1:3000/me --login alice \
//!     [--connections 16] [--duration 10] [--json]
//! cargo run --release --example loadgen -- --url http://127.0.0.1:3000/me \
//!     --mint-secret "$JWT_SECRET" --subjects 10000 [--zipf 1.0]
//! cargo run --release --example loadgen -- --url http://127.0.0.1:3000/me \
//!     --mint-es256 tests/keys/jwk/p256.pem [--kid loadgen] --subjects 10000
//! ```
//!
//! Opens N keep-alive HTTP/1.1 connections (hyper client), each sending `GET <url>` with the
//! bearer token back to back for the fixed duration, then prints requests/s and p50/p99
//! latency. `--login SUB` gets the token from the server's `POST /login`; `--token T` uses one
//! you have. `--mint-secret S --subjects N` mints one HS256 token per subject (`load-0` ...
//! `load-{N-1}`, 15 minutes), `--mint-es256 PEM` one ES256 token per subject with that PKCS#8
//! P-256 private key (header `kid`: `--kid`, default `loadgen`; for a server whose JWKS holds
//! the public key), and sends each request with one of them, drawn from a Zipf
//! distribution (exponent `--zipf`, default 1.0): many distinct clients, each reusing its token,
//! a few of them busy, as real traffic is. It refuses any address outside the loopback range: it is for measuring a server on
//! this machine, nothing else.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

struct Args {
    url: Uri,
    token: Option<String>,
    login: Option<String>,
    mint_secret: Option<String>,
    mint_es256: Option<String>,
    kid: String,
    subjects: usize,
    zipf: f64,
    connections: usize,
    duration: Duration,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut url, mut token, mut login, mut connections, mut duration, mut json) =
        (None, None, None, 16, Duration::from_secs(10), false);
    let (mut mint_secret, mut subjects, mut zipf) = (None, 1, 1.0);
    let (mut mint_es256, mut kid) = (None, "loadgen".to_owned());
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--url" => url = Some(value()?.parse::<Uri>().map_err(|e| e.to_string())?),
            "--token" => token = Some(value()?),
            "--login" => login = Some(value()?),
            "--connections" => connections = value()?.parse().map_err(|_| "--connections takes a number")?,
            "--duration" => {
                duration = Duration::from_secs(value()?.parse().map_err(|_| "--duration takes seconds")?)
            }
            "--json" => json = true,
            "--mint-secret" => mint_secret = Some(value()?),
            "--mint-es256" => mint_es256 = Some(value()?),
            "--kid" => kid = value()?,
            "--subjects" => subjects = value()?.parse().map_err(|_| "--subjects takes a number")?,
            "--zipf" => zipf = value()?.parse().map_err(|_| "--zipf takes a number")?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let url = url.ok_or("--url is required")?;
    if token.is_none() && login.is_none() && mint_secret.is_none() && mint_es256.is_none() {
        return Err("one of --token, --login, --mint-secret or --mint-es256 is required".into());
    }
    Ok(Args {
        url,
        token,
        login,
        mint_secret,
        mint_es256,
        kid,
        subjects: subjects.max(1),
        zipf,
        connections: connections.max(1),
        duration,
        json,
    })
}

/// The URL's socket address, which must be on the loopback range.
fn loopback_addr(url: &Uri) -> Result<SocketAddr, String> {
    let host = url.host().ok_or("the URL has no host")?;
    let port = url.port_u16().unwrap_or(80);
    let addr = (host.trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or("no address")?;
    let loopback = match addr.ip() {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => ip.is_loopback(),
    };
    if loopback {
        Ok(addr)
    } else {
        Err(format!(
            "{addr} is not a loopback address; refusing to send load there"
        ))
    }
}

async fn connect(addr: SocketAddr) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn login(addr: SocketAddr, url: &Uri, sub: &str) -> Result<String, String> {
    let mut sender = connect(addr).await?;
    let body = serde_json::json!({ "sub": sub }).to_string();
    let req = Request::post("/login")
        .header("host", url.authority().map(|a| a.as_str()).unwrap_or("localhost"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let bytes = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    json["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no access_token in {json}"))
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    non_2xx: u64,
    errors: u64,
}

/// The tokens requests carry, and how one is picked for each request.
struct Tokens {
    /// `Bearer <token>` header values.
    headers: Vec<String>,
    /// Cumulative Zipf weights, one per token (empty: always the first).
    cdf: Vec<f64>,
}

impl Tokens {
    fn one(token: &str) -> Self {
        Self {
            headers: vec![format!("Bearer {token}")],
            cdf: Vec::new(),
        }
    }

    /// One token per subject, signed with `key` under `header`, and the Zipf(`exponent`)
    /// weights of their ranks.
    fn minted(
        key: &jsonwebtoken::EncodingKey,
        header: &jsonwebtoken::Header,
        subjects: usize,
        exponent: f64,
    ) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let headers = (0..subjects)
            .map(|i| {
                let claims = serde_json::json!({
                    "jti": format!("load-token-{i}"), "sub": format!("load-{i}"),
                    "iat": now, "exp": now + 900,
                });
                let token = jsonwebtoken::encode(header, &claims, key).expect("signing");
                format!("Bearer {token}")
            })
            .collect();
        let mut total = 0.0;
        let cdf = (1..=subjects)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(exponent);
                total
            })
            .collect();
        Self { headers, cdf }
    }

    /// The header for a uniform draw `u` in [0, 1).
    fn pick(&self, u: f64) -> &str {
        let index = match self.cdf.last() {
            None => 0,
            Some(total) => self.cdf.partition_point(|c| *c < u * total),
        };
        &self.headers[index.min(self.headers.len() - 1)]
    }
}

async fn run_connection(
    addr: SocketAddr,
    url: Uri,
    tokens: std::sync::Arc<Tokens>,
    seed: u64,
    until: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let Ok(mut sender) = connect(addr).await else {
        tally.errors += 1;
        return tally;
    };
    let path = url
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let host = url
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_else(|| "localhost".into());
    // xorshift64*: a per-connection stream of draws, cheap next to a request.
    let mut state = seed | 1;
    let mut draw = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    };
    while Instant::now() < until {
        let req = Request::get(path.as_str())
            .header("host", host.as_str())
            .header("authorization", tokens.pick(draw()))
            .body(Full::new(Bytes::new()))
            .expect("static request parts are valid");
        let started = Instant::now();
        match sender.send_request(req).await {
            Ok(res) => {
                let ok = res.status().is_success();
                if res.into_body().collect().await.is_err() {
                    tally.errors += 1;
                    break;
                }
                tally
                    .latencies_us
                    .push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                tally.non_2xx += u64::from(!ok);
            }
            Err(_) => {
                tally.errors += 1;
                break;
            }
        }
    }
    tally
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("loadgen: {message}");
            std::process::exit(2);
        }
    };
    let addr = match loopback_addr(&args.url) {
        Ok(addr) => addr,
        Err(message) => {
            eprintln!("loadgen: {message}");
            std::process::exit(2);
        }
    };
    let minting = match (&args.mint_secret, &args.mint_es256) {
        (Some(secret), _) => Some(Ok((
            jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            jsonwebtoken::Header::default(),
        ))),
        (None, Some(path)) => Some(
            std::fs::read(path)
                .map_err(|e| format!("{path}: {e}"))
                .and_then(|pem| {
                    jsonwebtoken::EncodingKey::from_ec_pem(&pem).map_err(|e| format!("{path}: {e}"))
                })
                .map(|key| {
                    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
                    header.kid = Some(args.kid.clone());
                    (key, header)
                }),
        ),
        (None, None) => None,
    };
    tower_jwt_revocation::decode::install_crypto_provider();
    let tokens = match (&args.token, &args.login, minting) {
        (Some(token), _, _) => Tokens::one(token),
        (None, Some(sub), _) => match login(addr, &args.url, sub).await {
            Ok(token) => Tokens::one(&token),
            Err(message) => {
                eprintln!("loadgen: login failed: {message}");
                std::process::exit(1);
            }
        },
        (None, None, Some(Ok((key, header)))) => Tokens::minted(&key, &header, args.subjects, args.zipf),
        (None, None, Some(Err(message))) => {
            eprintln!("loadgen: {message}");
            std::process::exit(2);
        }
        (None, None, None) => unreachable!("parse_args requires one"),
    };
    let tokens = std::sync::Arc::new(tokens);
    let started = Instant::now();
    let until = started + args.duration;
    let tasks: Vec<_> = (0..args.connections)
        .map(|i| {
            let seed = 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(i as u64 + 1);
            tokio::spawn(run_connection(
                addr,
                args.url.clone(),
                std::sync::Arc::clone(&tokens),
                seed,
                until,
            ))
        })
        .collect();
    let mut all = Tally::default();
    for task in tasks {
        if let Ok(tally) = task.await {
            all.latencies_us.extend(tally.latencies_us);
            all.non_2xx += tally.non_2xx;
            all.errors += tally.errors;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let requests = all.latencies_us.len();
    let rps = requests as f64 / elapsed;
    let (p50, p99) = (
        percentile(&all.latencies_us, 0.50),
        percentile(&all.latencies_us, 0.99),
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "url": args.url.to_string(), "connections": args.connections, "seconds": elapsed,
                "tokens": tokens.headers.len(),
                "requests": requests, "rps": rps, "p50_us": p50, "p99_us": p99,
                "non_2xx": all.non_2xx, "errors": all.errors,
            })
        );
    } else {
        println!(
            "{}: {requests} requests in {elapsed:.1} s over {} connections: {rps:.0} req/s, p50 {p50} µs, p99 {p99} µs, \
             {} non-2xx, {} errors",
            args.url, args.connections, all.non_2xx, all.errors
        );
    }
    if all.non_2xx > 0 || all.errors > 0 || requests == 0 {
        std::process::exit(1);
    }
}
