//! Interoperability with a DPoP client nobody here wrote: panva's `oauth4webapi` (npm), driven
//! by `tests/interop/dpop_client.mjs` under Node, calls the demo on a loopback port. The library
//! makes every proof itself, retries after the demo's `use_dpop_nonce` challenge with the nonce
//! it sent, and validates the demo's RFC 9728 metadata; the demo verifies a test provider's
//! RS256 token bound to the client's P-256 key.
//!
//! `scripts/test.sh` installs the library (`npm ci` in `tests/interop`); without Node or the
//! library this test says so and skips.

#[allow(dead_code)]
#[path = "../examples/server.rs"]
mod server;

mod common;

use std::path::Path;
use std::time::Duration;

use common::dpop::ES256;
use common::provider::{Key, Provider, sign};
use serde_json::{Value, json};
use tower_jwt_revocation::jsonwebtoken::Algorithm;

const NONCE_SECRET: &str = "interop nonce secret, at least thirty-two bytes";

#[tokio::test]
async fn oauth4webapi_calls_the_demo_with_dpop_proofs_and_nonces() {
    let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let Some(node) = common::find_program("node") else {
        eprintln!("SKIPPED: no node on PATH (Debian package nodejs) for the DPoP interop client");
        return;
    };
    // oauth4webapi needs Node 20 (a global WebCrypto in modules); Debian 12's nodejs is 18.
    let version = std::process::Command::new(&node).arg("--version").output().ok();
    let major = version.as_ref().and_then(|out| {
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .strip_prefix('v')?
            .split('.')
            .next()?
            .parse::<u32>()
            .ok()
    });
    if major.is_none_or(|major| major < 20) {
        eprintln!("SKIPPED: the DPoP interop client needs Node 20 or later, found {major:?}");
        return;
    }
    if !interop.join("node_modules/oauth4webapi").is_dir() {
        eprintln!(
            "SKIPPED: oauth4webapi is not installed; run `npm ci` in tests/interop (scripts/test.sh does)"
        );
        return;
    }

    let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let resource = format!("http://{}", listener.local_addr().unwrap());
    let vars = |name: &str| match name {
        "OIDC_ISSUER" => Some(provider.issuer()),
        "JWKS_ALLOW_HTTP" => Some("1".to_owned()),
        "RESOURCE_URL" => Some(resource.clone()),
        "DPOP" => Some("required".to_owned()),
        "DPOP_NONCE_SECRET" => Some(NONCE_SECRET.to_owned()),
        _ => None,
    };
    let config = server::Config {
        secret: Vec::new(),
        admin_subjects: vec![],
        failure_policy: tower_jwt_revocation::FailurePolicy::Closed,
        metrics: None,
        provider: server::provider_from_vars(vars).unwrap(),
        audience: Some("demo-api".into()),
        baseline_with_provider: false,
        receivers: None,
        resource: server::resource_from_vars(vars).unwrap(),
    };
    let app = server::in_memory_app(config);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut claims = provider.claims("interop-1", "pat");
    claims["aud"] = json!("demo-api");
    claims["cnf"] = json!({"jkt": ES256.jkt()});
    let token = sign(Key::RsaA, Algorithm::RS256, Some("a"), &claims);

    let run = tokio::process::Command::new(node)
        .arg(interop.join("dpop_client.mjs"))
        .current_dir(&interop)
        .env("RESOURCE", &resource)
        .env("TOKEN", &token)
        .env(
            "KEY_PEM",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys/jwk/p256.pem"),
        )
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the interop client finishes within a minute")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let steps: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let step = |name: &str| {
        steps
            .iter()
            .find(|step| step["step"] == name)
            .unwrap_or_else(|| panic!("no {name} step in {stdout}"))
            .clone()
    };
    let metadata = step("metadata");
    assert_eq!(metadata["ok"], true, "{metadata}");
    assert_eq!(metadata["resource"], resource.as_str());
    let me = step("me");
    assert_eq!(
        (me["sub"].as_str(), me["nonce_retry"].as_bool()),
        (Some("pat"), Some(true)),
        "{me}"
    );
    assert_eq!(step("logout")["ok"], true);
    let revoked = step("revoked");
    assert_eq!(
        (revoked["error"].as_str(), revoked["description"].as_str()),
        (Some("invalid_token"), Some("token revoked")),
        "{revoked}"
    );
}
