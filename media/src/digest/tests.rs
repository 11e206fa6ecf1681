use super::*;

const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// A REGISTER's credentials from 127.0.0.1 checked against `password`.
fn verify(k: &mut NonceKeeper, c: &Credentials, password: &str, now: i64) -> Verdict {
    k.verify(c, "REGISTER", "tandem", password, A, now)
}

fn creds(k: &NonceKeeper, alg: Algorithm, to: IpAddr, now: i64, nc: u32) -> Credentials {
    let ch = &k.challenges("tandem", &[alg], to, now, false)[0];
    let v = client_authorization_nc(ch, "1001", "secret", "REGISTER", "sip:127.0.0.1", nc).unwrap();
    Credentials::parse(&v).unwrap()
}

#[test]
fn rfc7616_section_3_9_1_md5_and_sha256_examples() {
    // RFC 7616 §3.9.1 worked example (HTTP, but the computation is the same).
    let mut c = Credentials {
        username: "Mufasa".into(),
        realm: "http-auth@example.org".into(),
        nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v".into(),
        uri: "/dir/index.html".into(),
        response: String::new(),
        algorithm: Algorithm::Md5,
        qop: Some("auth".into()),
        nc: Some("00000001".into()),
        cnonce: Some("f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ".into()),
    };
    assert_eq!(
        response(&c, "GET", "Circle of Life").unwrap(),
        "8ca523f5e9506fed4657c9700eebdbec"
    );
    c.algorithm = Algorithm::Sha256;
    assert_eq!(
        response(&c, "GET", "Circle of Life").unwrap(),
        "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    );
}

#[test]
fn round_trip_both_algorithms_and_wrong_password() {
    // RFC 8760 §2.4: both challenges offered; each one verifies.
    let mut k = NonceKeeper::new(300);
    let both = k.challenges(
        "tandem",
        &[Algorithm::Sha256, Algorithm::Md5],
        A,
        1000,
        false,
    );
    assert_eq!(both.len(), 2);
    assert!(both[0].contains("SHA-256") && both[1].contains("MD5"));
    for (i, alg) in [Algorithm::Sha256, Algorithm::Md5].into_iter().enumerate() {
        // One nonce per challenge: each algorithm answers its own.
        let ch = &k.challenges("tandem", &[alg], A, 1000 + i as i64, false)[0];
        let v = client_authorization(ch, "1001", "secret", "REGISTER", "sip:127.0.0.1").unwrap();
        let c = Credentials::parse(&v).unwrap();
        assert_eq!(verify(&mut k, &c, "wrong", 1010), Verdict::Wrong);
        assert_eq!(
            k.verify(&c, "INVITE", "tandem", "secret", A, 1010),
            Verdict::Wrong
        );
        // RFC 7616 §3.3 stale nonce
        assert_eq!(verify(&mut k, &c, "secret", 1400), Verdict::Stale);
        assert_eq!(verify(&mut k, &c, "secret", 1010), Verdict::Ok);
    }
}

#[test]
fn nonce_counts_must_increase_and_the_nonce_only_works_from_its_address() {
    // RFC 7616 §3.4 (nc) and §5.10 (replay).
    let mut k = NonceKeeper::new(300);
    let c1 = creds(&k, Algorithm::Md5, A, 1000, 1);
    let ok = |k: &mut NonceKeeper, c: &Credentials, from| {
        k.verify(c, "REGISTER", "tandem", "secret", from, 1001)
    };
    // From another address first: right password, unusable nonce.
    assert_eq!(ok(&mut k, &c1, B), Verdict::Stale);
    assert_eq!(ok(&mut k, &c1, A), Verdict::Ok);
    assert_eq!(ok(&mut k, &c1, A), Verdict::Replayed);
    assert_eq!(ok(&mut k, &c1, B), Verdict::Stale);
    // The nonce's next counts work, going back does not, gaps are allowed.
    let nonce = c1.nonce.clone();
    let ch = format!("Digest realm=\"tandem\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\"");
    let at = |nc| {
        let v = client_authorization_nc(&ch, "1001", "secret", "REGISTER", "sip:127.0.0.1", nc)
            .unwrap();
        Credentials::parse(&v).unwrap()
    };
    assert_eq!(ok(&mut k, &at(2), A), Verdict::Ok);
    assert_eq!(ok(&mut k, &at(5), A), Verdict::Ok);
    assert_eq!(ok(&mut k, &at(4), A), Verdict::Replayed);
    assert_eq!(ok(&mut k, &at(5), A), Verdict::Replayed);
    assert_eq!(k.in_use(), 1);
    // nc 0 or not hex: not a usable response.
    let mut bad = at(1);
    bad.nc = Some("zz".into());
    bad.response = response(&bad, "REGISTER", "secret").unwrap();
    assert_eq!(ok(&mut k, &bad, A), Verdict::Malformed);
    // Without qop (RFC 2069) a nonce is good once.
    let mut plain = creds(&k, Algorithm::Md5, A, 1000, 1);
    plain.qop = None;
    plain.nc = None;
    plain.cnonce = None;
    plain.nonce = k.nonce(A, 999);
    plain.response = response(&plain, "REGISTER", "secret").unwrap();
    assert_eq!(ok(&mut k, &plain, A), Verdict::Ok);
    assert_eq!(ok(&mut k, &plain, A), Verdict::Replayed);
}

#[test]
fn remembered_nonces_are_bounded_and_forgotten_ones_are_stale_not_replayable() {
    let mut k = NonceKeeper::with_cap(300, 16);
    let mut used = Vec::new();
    for i in 0..40 {
        let c = creds(&k, Algorithm::Md5, A, 1000 + i, 1);
        assert_eq!(verify(&mut k, &c, "secret", 1000 + i), Verdict::Ok);
        used.push(c);
        assert!(k.in_use() <= 16, "{}", k.in_use());
    }
    // The oldest ones were forgotten: a replay of them is refused as stale.
    assert_eq!(verify(&mut k, &used[0], "secret", 1040), Verdict::Stale);
    assert_eq!(verify(&mut k, &used[39], "secret", 1040), Verdict::Replayed);
    // Expired ones are dropped once their lifetime is over.
    let c = creds(&k, Algorithm::Md5, A, 2000, 1);
    assert_eq!(verify(&mut k, &c, "secret", 2000), Verdict::Ok);
    assert_eq!(k.in_use(), 1);
}

#[test]
fn foreign_nonce_and_garbage_are_rejected() {
    let mut k = NonceKeeper::new(300);
    let other = NonceKeeper::new(300);
    // Another keeper's nonce (another node, before a failover) with the right
    // password: a fresh challenge, not a wrong password.
    let c = creds(&other, Algorithm::Md5, A, 1000, 1);
    assert_eq!(verify(&mut k, &c, "secret", 1000), Verdict::Stale);
    assert_eq!(verify(&mut k, &c, "guess", 1000), Verdict::Wrong);
    assert_eq!(k.check("nonsense", A, 1000), NonceState::Foreign);
    assert!(Credentials::parse("Basic abc").is_none());
    assert!(Credentials::parse("Digest username=\"x").is_none());
    assert!(Credentials::parse("Digest algorithm=FOO, username=a").is_none());
}
