//! Server-side validation of replicated settings: what is refused, and that the
//! message names the key and the fix.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::retention::Retention;
use super::*;

fn ctx() -> Context {
    Context {
        members: vec![1, 2, 3],
        eligible: vec![1, 2],
        force: false,
        alarm_entries: BTreeMap::new(),
    }
}

fn refused(key: &str, value: Value) -> SettingError {
    validate(key, &value, &ctx()).expect_err(&format!("{key} = {value} must be refused"))
}

#[test]
fn maintenance_takes_a_boolean_for_a_member() {
    assert!(validate("maintenance.2", &json!(true), &ctx()).is_ok());
    assert!(validate("maintenance.2", &json!(false), &ctx()).is_ok());
    // "true" as a string was silently "off" before.
    let e = refused("maintenance.2", json!("true"));
    assert_eq!(e.key, "maintenance.2");
    assert!(e.to_string().contains("not a boolean"), "{e}");
    let e = refused("maintenance.99", json!(true));
    assert!(e.to_string().contains("node 99 is not a member"), "{e}");
    let e = refused("maintenance.x", json!(true));
    assert!(e.to_string().contains("not a node id"), "{e}");
}

#[test]
fn the_last_data_node_that_may_be_master_needs_force_for_maintenance() {
    let last = Context {
        eligible: vec![2],
        ..ctx()
    };
    let e = validate("maintenance.2", &json!(true), &last).unwrap_err();
    assert!(e.to_string().contains("last data node"), "{e}");
    assert!(e.fix.contains("--force"), "{e}");
    // Taking it out, another node, or with force: accepted.
    assert!(validate("maintenance.2", &json!(false), &last).is_ok());
    assert!(validate("maintenance.1", &json!(true), &last).is_ok());
    let forced = Context {
        force: true,
        ..last
    };
    assert!(validate("maintenance.2", &json!(true), &forced).is_ok());
    // No eligible node at all (all in maintenance already): still needs force.
    let none = Context {
        eligible: vec![],
        ..ctx()
    };
    assert!(validate("maintenance.3", &json!(true), &none).is_err());
}

#[test]
fn retention_takes_days_and_a_positive_interval() {
    assert!(validate("retention.cdr_days", &json!(365), &ctx()).is_ok());
    assert!(validate("retention.recording_days", &json!(0.5), &ctx()).is_ok());
    assert!(validate("retention.cdr_days", &json!(0), &ctx()).is_ok());
    assert!(validate("retention.interval_s", &json!(60), &ctx()).is_ok());
    refused("retention.cdr_days", json!(-1));
    refused("retention.cdr_days", json!("a year"));
    refused("retention.interval_s", json!(0));
    refused("retention.interval_s", json!(1.5));
    assert!(validate("retention.audit_entries", &json!(100), &ctx()).is_ok());
    refused("retention.audit_entries", json!(99));
    refused("retention.audit_entries", json!("many"));
    let e = refused("retention.cdr_dayz", json!(3));
    assert!(e.fix.contains("retention.cdr_days"), "{e}");
}

#[test]
fn users_and_the_audit_log_are_not_written_as_plain_settings() {
    for key in ["user.alice", "user.alice/token/0011223344556677", "audit.1"] {
        let e = refused(key, json!({"role": "admin"}));
        assert!(e.problem.contains("reserved"), "{e}");
    }
}

#[test]
fn retention_reader_ignores_bad_stored_values_and_says_so() {
    let entries: BTreeMap<String, Value> = [
        ("retention.cdr_days".to_string(), json!(2)),
        ("retention.recording_days".to_string(), json!("soon")),
        ("retention.interval_s".to_string(), json!(30)),
    ]
    .into_iter()
    .collect();
    let (r, errors) = Retention::from_entries(&entries);
    assert_eq!(r.cdr_age, Some(std::time::Duration::from_secs(2 * 86_400)));
    assert_eq!(r.recording_age, None, "a bad value never deletes");
    assert_eq!(r.interval, std::time::Duration::from_secs(30));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].key, "retention.recording_days");
    assert_eq!(
        Retention::from_entries(&BTreeMap::new()).0,
        Retention::default()
    );
}

#[test]
fn smtp_keys_are_checked_one_by_one_with_the_mailer_parser() {
    for (k, v) in [
        ("smtp.host", json!("mail.example.com")),
        ("smtp.port", json!(587)),
        ("smtp.security", json!("tls")),
        ("smtp.username", json!("noc")),
        ("smtp.password", json!("secret")),
        ("smtp.from", json!("tandem@example.com")),
        ("smtp.fallback_host", json!("backup.example.com:25")),
        ("smtp.timeout_s", json!(5)),
    ] {
        assert!(validate(k, &v, &ctx()).is_ok(), "{k} = {v}");
    }
    let e = refused("smtp.security", json!("ssl"));
    assert!(e.to_string().contains("smtp.security"), "{e}");
    refused("smtp.port", json!(70000));
    refused("smtp.from", json!("not an address"));
    refused("smtp.timeout_s", json!(0));
    let e = refused("smtp.hots", json!("x"));
    assert!(e.fix.contains("smtp.host"), "{e}");
}

#[test]
fn alarm_routes_must_name_existing_lists() {
    let e = refused("alarm.route.cluster", json!(["noc"]));
    assert!(e.to_string().contains("recipient list `noc`"), "{e}");
    let mut c = ctx();
    c.alarm_entries
        .insert("alarm.recipients.noc".into(), json!(["noc@example.com"]));
    assert!(validate("alarm.route.cluster", &json!(["noc"]), &c).is_ok());
    let e = validate("alarm.recipients.ops", &json!(["no-at-sign"]), &c).unwrap_err();
    assert_eq!(e.key, "alarm.recipients.ops");
}

#[test]
fn recording_cap_is_a_whole_number() {
    assert!(validate(RECORDING_CAP_KEY, &json!(2048), &ctx()).is_ok());
    assert!(validate(RECORDING_CAP_KEY, &json!(0), &ctx()).is_ok());
    refused(RECORDING_CAP_KEY, json!(-5));
    refused(RECORDING_CAP_KEY, json!("fast"));
    refused("replication.other", json!(1));
}

#[test]
fn sip_users_are_checked_and_bindings_are_not_written_by_hand() {
    assert!(validate("sip.user.201", &json!({"password": "longenough"}), &ctx()).is_ok());
    refused("sip.user.201", json!({"password": "short"}));
    refused("sip.user.201", json!({"pass": "longenough"}));
    refused("sip.user.bad ext", json!({"password": "longenough"}));
    refused("sip.binding.201/abc", json!({}));
    refused("sip.other", json!(1));
}

#[test]
fn free_keys_are_accepted() {
    assert!(validate("site.name", &json!("Berlin"), &ctx()).is_ok());
    assert!(validate("integrator/custom", &json!({"a": 1}), &ctx()).is_ok());
}

/// Found with the API fuzz target (`node/fuzz`, which asserts it): days beyond what a `Duration` holds
/// panicked in `validate` (and in every node's retention reader).
#[test]
fn retention_days_too_large_for_a_duration_are_refused() {
    for days in [1e15, 1e300, f64::MAX] {
        let e = refused("retention.cdr_days", json!(days));
        assert!(e.problem.contains("from 0 to"), "{e}");
    }
    let mut entries = BTreeMap::new();
    entries.insert("retention.recording_days".to_string(), json!(1e300));
    let (r, errors) = Retention::from_entries(&entries);
    assert_eq!(r.recording_age, None, "a bad value keeps everything");
    assert_eq!(errors.len(), 1);
}

/// 213 503 982.3352 days is 2^64 µs + 51 s: cast to i64 the age wrapped to 51 s,
/// and retention deleted every CDR older than that.
#[test]
fn retention_days_whose_microseconds_wrap_are_refused() {
    refused("retention.cdr_days", json!(213_503_982.335_2));
    let now = 1_767_225_600_000_000;
    let age = std::time::Duration::from_secs_f64(213_503_982.335_2 * 86_400.0);
    assert_eq!(retention::cutoff(Some(age), now), None);
    let year = std::time::Duration::from_secs(365 * 86_400);
    assert_eq!(
        retention::cutoff(Some(year), now),
        Some(now - 365 * 86_400 * 1_000_000)
    );
    assert_eq!(retention::cutoff(None, now), None);
}

/// Found by the API fuzz target (`node/fuzz`): serde reads a user from an array
/// too, and an array's password was not masked by `GET /api/v1/config`.
#[test]
fn a_sip_user_must_be_an_object() {
    let e = refused("sip.user.201", json!(["secret-pass", "R"]));
    assert!(e.problem.contains("expected a JSON object"), "{e}");
    assert!(validate("sip.user.201", &json!({"password": "secret-pass"}), &ctx()).is_ok());
}
