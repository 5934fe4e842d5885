//! The pure core as another crate sees it: one request's path through the
//! four hot paths (`cargo test -p fastgw-native --no-default-features`).

use _native::jwt::{Alg, Config, KeySet, Reason, Verifier};
use _native::limiter::Limit;
use _native::limiter::{LocalTable, Period};
use _native::ring::Ring;
use _native::shm::ShmTable;
use _native::sse::{Output, Scanner, COMMIT, DONE, USAGE};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

#[test]
fn a_request_through_the_hot_paths() {
    // Auth: an HS256 token.
    let secret = b"an-integration-test-secret-of-32b";
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#),
        URL_SAFE_NO_PAD.encode(r#"{"sub":"team-a","exp":2000}"#)
    );
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        input.as_bytes(),
    );
    let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
    let verifier = Verifier::new(
        KeySet::from_secret(secret, None, None),
        Config {
            algorithms: vec![Alg::HS256],
            require: vec!["exp".into()],
            ..Config::default()
        },
    )
    .unwrap();
    let (claims, _) = verifier.verify(token.as_bytes(), 1000.0).unwrap();
    assert_eq!(claims["sub"], "team-a");
    assert_eq!(
        verifier
            .verify(token.as_bytes(), 2000.0)
            .unwrap_err()
            .reason,
        Reason::Expired
    );

    // Limits: rpm, tpm and a monthly budget, in-process and shared.
    let limits = [
        Limit::rate(2.0, 60.0, None).unwrap(),
        Limit::rate(1000.0, 60.0, None).unwrap(),
        Limit::budget(1.0, Period::Month).unwrap(),
    ];
    let keys: [&[u8]; 3] = [b"team-a:rpm", b"team-a:tpm", b"team-a:usd"];
    let mut local = LocalTable::new(1000);
    let shared = ShmTable::anonymous(1024).unwrap();
    for expect in [true, true, false] {
        let a = local
            .reserve(&keys, &limits, &[1.0, 300.0, 0.01], 1000.0)
            .unwrap();
        let b = shared
            .reserve(&keys, &limits, &[1.0, 300.0, 0.01], 1000.0)
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.admitted, expect);
    }

    // Routing: the same key lands on the same deployment.
    let ring = Ring::new(&[(b"east", 1.0), (b"west", 1.0)], 100).unwrap();
    let first = ring.lookup(b"team-a").unwrap();
    assert_eq!(ring.lookup(b"team-a"), Some(first));

    // Streaming: commit point, usage and end of stream.
    let mut scanner = Scanner::new(false, 1 << 20);
    let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n\
data: [DONE]\n\n";
    let (out, flags) = scanner.feed(stream).unwrap();
    assert_eq!(out, Output::Unchanged);
    assert_eq!(flags, COMMIT | USAGE | DONE);
    assert_eq!(scanner.usage().unwrap().total_tokens, 4);
}
