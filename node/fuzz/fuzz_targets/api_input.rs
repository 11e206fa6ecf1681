//! Fuzz what the HTTP API makes of untrusted request bytes: JSON bodies, query
//! strings (decoded by axum's own `Query` extractor, as the handlers receive them),
//! path parameters and upload headers, through the same parse and check functions
//! the handlers call, and the replicated-settings validation a `PUT /config/{key}`
//! runs before anything is proposed.
//!
//! Input: the first byte picks the endpoint, the rest holds its parts separated by
//! NUL bytes (see [`parts`]); seeds in `corpus/api_input/`.
//!
//! Beyond "no panic", each case checks what the handler relies on: an accepted
//! value round-trips through what is stored and read back (JSON, the binary CDR
//! record, the config text), what one check accepts the next reader accepts too,
//! secrets are masked, and every refusal is a 400.
#![no_main]

use std::collections::{BTreeMap, HashMap};

use axum::extract::Query;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tandem::http::{alarms, cdrs, cluster, config, params, recordings, sip, ApiError};
use tandem::settings;
use tandem_replication::cdr::{Cdr, CdrRef};
use tandem_replication::store::codec::{self, Versioned};
use tandem_replication::store::query::Cursor;

/// The first `n` NUL-separated parts of `data` (the last one takes the rest, NULs
/// included; missing parts are empty).
fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = data.splitn(n, |&b| b == 0).collect();
    out.resize(n, b"");
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The query string as the handlers get it, or `None` where hyper or axum would
/// have answered before any handler ran (bad URI: 400 from hyper; a query axum
/// cannot decode: 400 from the extractor).
fn query(q: &[u8]) -> Option<HashMap<String, String>> {
    let q = std::str::from_utf8(q).ok()?;
    let uri: Uri = format!("/api/v1/x?{q}").parse().ok()?;
    Query::<HashMap<String, String>>::try_from_uri(&uri)
        .ok()
        .map(|Query(p)| p)
}

/// A refusal of request input is a 400, never a 5xx.
fn refused(e: &ApiError) {
    assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{}", e.message());
    assert!(!e.message().is_empty());
}

fn check<T>(r: Result<T, ApiError>) -> Option<T> {
    r.map_err(|e| refused(&e)).ok()
}

/// `POST /api/v1/cdrs`.
fn cdr_post(body: &[u8]) {
    let Some(batch) = check(cdrs::parse_cdrs(body)) else {
        return;
    };
    assert!(!batch.is_empty() && batch.len() <= tandem::http::MAX_BATCH);
    // What a client re-sends of an answer parses to the same CDRs.
    let again = serde_json::to_vec(&batch).expect("serialize CDRs");
    let back = cdrs::parse_cdrs(&again).expect("re-parse own JSON");
    assert_eq!(back, batch, "JSON round trip");
    for c in &batch {
        stored(c);
    }
}

/// One accepted CDR through the store: the binary record, its borrowed view as
/// the query and export paths read it, the JSON and CSV they write.
fn stored(c: &Cdr) {
    let bytes = c.encode().expect("encode CDR");
    let view: CdrRef = codec::decode_borrowed(&bytes).expect("decode stored CDR");
    let json = serde_json::to_vec(&view).expect("serialize stored CDR");
    let shown: Cdr = serde_json::from_slice(&json).expect("page JSON is a CDR");
    // Times are stored in microseconds.
    for (a, b) in [(shown.start, c.start), (shown.end, c.end)] {
        assert_eq!(a.timestamp_micros(), b.timestamp_micros(), "stored time");
    }
    assert_eq!(
        shown.answer.map(|t| t.timestamp_micros()),
        c.answer.map(|t| t.timestamp_micros())
    );
    let same = Cdr {
        start: shown.start,
        end: shown.end,
        answer: shown.answer,
        ..c.clone()
    };
    assert_eq!(shown, same, "stored CDR reads back");
    assert!(
        shown.validate().is_ok(),
        "a stored CDR breaks its own rules"
    );
    // The export's zero-copy row equals the owned CDR's row.
    let mut fast = csv::Writer::from_writer(Vec::new());
    view.write_csv(&mut fast).expect("csv row");
    let mut slow = csv::Writer::from_writer(Vec::new());
    slow.write_record(shown.csv_record()).expect("csv record");
    assert_eq!(
        fast.into_inner().expect("flush"),
        slow.into_inner().expect("flush"),
        "CSV rows"
    );
}

/// `GET /api/v1/cdrs?...` (JSON pages and CSV export).
fn cdr_get(q: &[u8]) {
    let Some(mut p) = query(q) else { return };
    if check(params::strong_read(&mut p)).is_none() {
        return;
    }
    let Some(got) = check(cdrs::cdr_params(p)) else {
        return;
    };
    if let Some(n) = got.limit {
        assert!(n >= 1);
        if got.format == cdrs::Format::Json {
            assert!(n <= tandem::http::MAX_LIMIT);
        }
    }
    if let (Some(f), Some(t)) = (got.query.from, got.query.to) {
        assert!(f < t);
    }
    if let Some(c) = got.query.cursor {
        let again = Cursor::from_hex(&c.to_hex()).expect("own cursor");
        assert_eq!(again.0, c.0);
    }
}

/// The cluster `validate` sees: members 1, 2, 3, data voters 1 and 2, and the
/// alarm settings picked by `alarm` (none, or a plausible set).
fn context(force: bool, alarm: u8) -> settings::Context {
    let mut alarm_entries = BTreeMap::new();
    if alarm % 2 == 1 {
        alarm_entries.insert(
            "alarm.recipients.ops".to_string(),
            Value::from(vec!["ops@example.com"]),
        );
        alarm_entries.insert("smtp.host".to_string(), Value::from("127.0.0.1"));
    }
    settings::Context {
        members: vec![1, 2, 3],
        eligible: vec![1, 2],
        force,
        alarm_entries,
    }
}

/// `PUT /api/v1/config/{key}?force=` with a JSON body, then what every reader
/// makes of the stored text.
fn config_put(key: &[u8], q: &[u8], body: &[u8], alarm: u8) {
    let key = text(key);
    if check(config::check_key(&key)).is_none() {
        return;
    }
    let Some(p) = query(q) else { return };
    let Some((force, value)) = check(config::put_request(p, body)) else {
        return;
    };
    let ctx = context(force, alarm);
    if settings::validate(&key, &value, &ctx).is_err() {
        return;
    }
    // The replicated text, as every node reads it back.
    let stored = value.to_string();
    let read = config::parse_value(&stored);
    assert_eq!(read, value, "config value round trip");
    let shown = config::shown_value(&key, &stored);
    if key == "smtp.password" {
        assert_eq!(shown, Value::from("***"));
    }
    let mut entries = BTreeMap::new();
    entries.insert(key.clone(), read.clone());
    if key.starts_with("retention.") {
        let (r, errors) = settings::retention::Retention::from_entries(&entries);
        assert!(errors.is_empty(), "validated retention misread: {errors:?}");
        // A validated age has a cutoff in the past (none would keep everything).
        let now = 1_767_225_600_000_000;
        for age in [r.cdr_age, r.recording_age].into_iter().flatten() {
            let c = settings::retention::cutoff(Some(age), now).expect("a cutoff");
            assert_eq!((now - c) as u128, age.as_micros(), "cutoff {c}");
        }
    }
    if let Some(ext) = key.strip_prefix(settings::sip::USER_PREFIX) {
        let user: settings::sip::StoredUser =
            serde_json::from_str(&stored).expect("validated SIP user reads back");
        assert!(settings::sip::check_password(ext, &user.password).is_ok());
        assert_eq!(shown.get("password"), Some(&Value::from("***")));
    }
    if key.starts_with(settings::bans::BAN_PREFIX) {
        let ban: settings::bans::StoredBan =
            serde_json::from_str(&stored).expect("validated ban reads back");
        assert!(ban.until_unix > 0);
        assert!(settings::bans::ban_source(&key).is_some());
    }
    if key.starts_with("alarm.") || key.starts_with("smtp.") {
        // The mailer reads the text the way `alarm_entries` does.
        let mut all = ctx.alarm_entries.clone();
        all.insert(key.clone(), read);
        let text: Vec<(String, String)> =
            all.into_iter().map(|(k, v)| (k, v.to_string())).collect();
        let entries = tandem_alarms::entries_from_text(text);
        if key.starts_with("alarm.") {
            assert!(tandem_alarms::rules::RulesConfig::from_entries(&entries).is_ok());
            assert!(tandem_alarms::recipients::Routing::from_entries(&entries).is_ok());
            assert!(tandem_alarms::rules::Silence::from_entries(&entries).is_ok());
        }
    }
    if key == settings::RECORDING_CAP_KEY {
        assert!(settings::recording_cap(&key, &config::parse_value(&stored)).is_ok());
    }
    if let Some(Ok(_)) = settings::maintenance_node(&key) {
        assert!(settings::maintenance_value(&key, &config::parse_value(&stored)).is_ok());
    }
}

/// `GET /api/v1/config?prefix=&consistency=`, `GET`/`DELETE /api/v1/config/{key}`.
fn config_read(key: &[u8], q: &[u8]) {
    let key = text(key);
    let _ = check(config::check_key(&key));
    let Some(mut p) = query(q) else { return };
    if check(params::strong_read(&mut p)).is_none() {
        return;
    }
    let mut list = p.clone();
    list.remove("prefix");
    let _ = check(params::no_unknown(&list));
    let _ = check(params::no_unknown(&p));
    // Whatever is stored under a key is shown without a panic.
    let _ = config::shown_value(&key, &text(q));
}

/// `PUT`/`DELETE /api/v1/sip/users/{ext}`.
fn sip_user(ext: &[u8], body: &[u8]) {
    let ext = text(ext);
    let Some(user) = check(sip::parse_user(&ext, body)) else {
        return;
    };
    // The key and value the handler writes pass the config checks too.
    let key = format!("{}{ext}", settings::sip::USER_PREFIX);
    assert!(config::check_key(&key).is_ok(), "{key}");
    let value = serde_json::to_value(&user).expect("user json");
    let ctx = context(false, 0);
    if let Err(e) = settings::validate(&key, &value, &ctx) {
        panic!("PUT /sip/users accepted what /config refuses: {e}");
    }
    let stored = serde_json::to_string(&user).expect("user json");
    let back: settings::sip::StoredUser = serde_json::from_str(&stored).expect("reads back");
    assert_eq!(back.password, user.password);
    assert_eq!(back.display_name, user.display_name);
}

/// The optional-field bodies: switchover `{"to": id}`, alarm test `{"to": addr}`,
/// recording verify `{"id": id}`.
fn small_bodies(body: &[u8]) {
    let _ = check(cluster::switchover_target(body));
    let _ = check(alarms::test_recipient(body));
    let _ = check(recordings::verify_target(body));
}

/// `POST /api/v1/recordings` (query and headers) and `GET /api/v1/recordings?...`.
fn recording_upload(q: &[u8], headers: &[u8]) {
    let Some(p) = query(q) else { return };
    let _ = check(recordings::list_params(p.clone()));
    let mut h = HeaderMap::new();
    for line in headers.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        // What hyper would not have accepted never reaches the handler.
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            h.append(n, v);
        }
    }
    let Some(info) = check(recordings::upload_info(&h, &p)) else {
        return;
    };
    assert!(tandem_replication::blobs::check_id(&info.id).is_ok());
    assert!(info.call_id.len() <= 256 && info.codec.len() <= 64);
    assert!(info.wait.as_secs() <= 3600);
    if let Some(s) = &info.sha256 {
        assert!(s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    }
}

/// `GET /api/v1/recordings/{id}` with a `Range` header, for a file of `size` bytes.
fn recording_download(id: &[u8], range: &[u8], size: &[u8]) {
    let _ = tandem_replication::blobs::check_id(&text(id));
    let mut n = [0u8; 8];
    for (d, s) in n.iter_mut().zip(size) {
        *d = *s;
    }
    let size = u64::from_le_bytes(n);
    let Ok(range) = std::str::from_utf8(range) else {
        return;
    };
    if let Ok(Some((a, b))) = recordings::parse_range(range, size) {
        assert!(a <= b && b < size, "range {a}-{b} of {size}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 8 {
        0 => cdr_post(rest),
        1 => cdr_get(rest),
        2 => {
            let p = parts(rest, 4);
            config_put(p[0], p[1], p[3], p[2].first().copied().unwrap_or(0));
        }
        3 => {
            let p = parts(rest, 2);
            config_read(p[0], p[1]);
        }
        4 => {
            let p = parts(rest, 2);
            sip_user(p[0], p[1]);
        }
        5 => small_bodies(rest),
        6 => {
            let p = parts(rest, 2);
            recording_upload(p[0], p[1]);
        }
        _ => {
            let p = parts(rest, 3);
            recording_download(p[0], p[1], p[2]);
        }
    }
});
