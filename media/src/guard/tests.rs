use super::*;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, last))
}

fn alarms(a: &[GuardAction]) -> usize {
    a.iter()
        .filter(|x| matches!(x, GuardAction::Alarm(_)))
        .count()
}

fn logs(a: &[GuardAction]) -> usize {
    a.iter()
        .filter(|x| matches!(x, GuardAction::Log(_)))
        .count()
}

#[test]
fn a_source_over_its_limit_is_banned_for_the_ban_time() {
    let t0 = Instant::now();
    let mut g = AuthGuard::new(GuardConfig {
        source_threshold: 3,
        ..GuardConfig::default()
    });
    let mut out = Vec::new();
    for _ in 0..3 {
        assert_eq!(g.admit(ip(5), "1001", false, t0), Admission::Allow);
        out.extend(g.failure(ip(5), "1001", Some("1001"), t0));
    }
    assert!(out.contains(&GuardAction::Ban {
        source: ip(5),
        duration: Duration::from_secs(600),
        failures: 3
    }));
    assert_eq!(alarms(&out), 1);
    assert_eq!(g.admit(ip(5), "1001", true, t0), Admission::SourceBanned);
    assert_eq!(g.admit(ip(6), "1001", false, t0), Admission::Allow);
    let later = t0 + Duration::from_secs(601);
    assert_eq!(g.admit(ip(5), "1001", false, later), Admission::Allow);
    // Below the limit a success forgets the failures.
    g.failure(ip(7), "1001", Some("1001"), t0);
    g.failure(ip(7), "1001", Some("1001"), t0);
    g.success(ip(7));
    let out = g.failure(ip(7), "1001", Some("1001"), t0);
    assert!(!out.iter().any(|a| matches!(a, GuardAction::Ban { .. })));
}

#[test]
fn guesses_spread_over_addresses_lock_the_account_but_not_its_phones() {
    let t0 = Instant::now();
    let mut g = AuthGuard::new(GuardConfig::default());
    let mut out = Vec::new();
    let mut refused = 0;
    for i in 0..50u32 {
        let src = ip(10 + (i % 20) as u8);
        let now = t0 + Duration::from_millis(u64::from(i) * 100);
        match g.admit(src, "1001", false, now) {
            Admission::Allow => out.extend(g.failure(src, "1001", Some("1001"), now)),
            Admission::AccountLocked => refused += 1,
            Admission::SourceBanned => panic!("2-3 failures per source ban nobody"),
        }
    }
    assert_eq!(refused, 30, "locked after 20 failures");
    assert_eq!(alarms(&out), 1, "{out:?}");
    let Some(GuardAction::Alarm(burst)) = out.iter().find(|a| matches!(a, GuardAction::Alarm(_)))
    else {
        unreachable!()
    };
    assert_eq!((burst.failures, burst.sources), (20, 20));
    assert_eq!(burst.accounts, vec!["1001".to_string()]);
    // First failure and the lock, nothing per failure.
    assert_eq!(logs(&out), 2, "{out:?}");
    let t1 = t0 + Duration::from_secs(5);
    assert_eq!(g.admit(ip(99), "1001", false, t1), Admission::AccountLocked);
    assert_eq!(g.admit(ip(50), "1001", true, t1), Admission::Allow);
    assert_eq!(g.admit(ip(99), "1002", false, t1), Admission::Allow);
    // The interval's summary, once.
    let s = g.poll(t0 + Duration::from_secs(61));
    assert!(
        matches!(
            &s[..],
            [GuardAction::Log(Notice::Summary {
                failures: 19,
                sources: 20,
                refused: 31,
                ..
            })]
        ),
        "{s:?}"
    );
    assert!(g.poll(t0 + Duration::from_secs(62)).is_empty());
    // The lock ends; the burst ends after a quiet window, and a new one alarms again.
    let t2 = t0 + Duration::from_secs(700);
    assert_eq!(g.admit(ip(99), "1001", false, t2), Admission::Allow);
    let over = g.poll(t2);
    assert!(
        over.contains(&GuardAction::Log(Notice::BurstOver { failures: 20 })),
        "{over:?}"
    );
    let mut again = Vec::new();
    for i in 0..20u32 {
        again.extend(g.failure(ip(100 + i as u8), "1001", Some("1001"), t2));
    }
    assert_eq!(alarms(&again), 1);
}

#[test]
fn unknown_user_names_are_not_locked_and_memory_is_bounded() {
    let t0 = Instant::now();
    let mut g = AuthGuard::new(GuardConfig::default());
    for i in 0..100u32 {
        g.failure(ip((i % 4) as u8 + 1), &format!("x{i}"), None, t0);
    }
    assert!(g.accounts.is_empty());
    assert_eq!(g.sources.len(), 4);
}
