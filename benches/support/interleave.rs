//! Timing compared variants in interleaved batches in one process, shared by `benches/check.rs`
//! and `benches/dpop.rs`: this machine's speed drifts by up to 2x within a minute, so a ratio of
//! two variants timed one after the other is noise; batches of every variant in turn, rotating
//! the order each round, meet the same slow spells.
#![allow(dead_code)]

use std::convert::Infallible;
use std::hint::black_box;

use http::{Request, Response};
use serde_json::json;
use tokio::runtime::Runtime;
use tower::{Service, ServiceExt};

/// A variant of an interleaved comparison: its name, any service of the stack (boxed), and what
/// makes each of its requests (made outside the timed span).
pub type Variant = (
    &'static str,
    tower::util::BoxService<Request<()>, Response<()>, Infallible>,
    Box<dyn FnMut() -> Request<()>>,
);

/// One request as a server drives a service: `ready().await`, then `call`.
pub async fn one<S>(service: &mut S, req: Request<()>) -> u16
where
    S: Service<Request<()>, Response = Response<()>, Error = Infallible>,
{
    let ready = service.ready().await.unwrap();
    black_box(ready.call(req).await.unwrap().status().as_u16())
}

/// Times `variants` in one process with their batches interleaved (round-robin, rotating the
/// order each round). Each batch takes about 2 ms (its size calibrated per variant); its
/// requests are made before the clock starts. Every answer must be 200. Appends one JSON line
/// per variant, its median per request over `rounds` batches, to `lines`, under `alg`.
pub fn interleaved(rt: &Runtime, alg: &str, mut variants: Vec<Variant>, rounds: usize, lines: &mut String) {
    let time = |variant: &mut Variant, calls: u32| {
        let requests: Vec<Request<()>> = (0..calls).map(|_| (variant.2)()).collect();
        let service = &mut variant.1;
        let started = std::time::Instant::now();
        rt.block_on(async {
            for request in requests {
                assert_eq!(one(service, request).await, 200);
            }
        });
        started.elapsed().as_nanos() as f64 / f64::from(calls)
    };
    let batches: Vec<u32> = variants
        .iter_mut()
        .map(|variant| {
            time(variant, 20);
            let per_call = time(variant, 50).max(1.0);
            (2_000_000.0 / per_call).clamp(1.0, 1_000.0) as u32
        })
        .collect();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        for k in 0..variants.len() {
            let i = (round + k) % variants.len();
            samples[i].push(time(&mut variants[i], batches[i]));
        }
    }
    for ((name, _, _), mut times) in variants.iter().zip(samples) {
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        eprintln!("interleaved/{alg}/{name}: {median:.0} ns");
        lines.push_str(&format!(
            "{}\n",
            json!({"alg": alg, "variant": name, "median_ns": median, "rounds": rounds})
        ));
    }
}
