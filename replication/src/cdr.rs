//! Call detail records: one record per call leg, the fields and CSV columns fixed by
//! the design contract.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Direction of a call leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
    Internal,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    Answered,
    NoAnswer,
    Busy,
    Failed,
    Cancelled,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
            Direction::Internal => "internal",
        }
    }
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Answered => "answered",
            Disposition::NoAnswer => "no_answer",
            Disposition::Busy => "busy",
            Disposition::Failed => "failed",
            Disposition::Cancelled => "cancelled",
        }
    }
}

/// A call detail record. Times are UTC; `answer` is `None` for an unanswered call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cdr {
    pub id: Uuid,
    #[serde(with = "time_repr")]
    pub start: DateTime<Utc>,
    #[serde(with = "time_repr::option", default)]
    pub answer: Option<DateTime<Utc>>,
    #[serde(with = "time_repr")]
    pub end: DateTime<Utc>,
    pub caller: String,
    pub callee: String,
    pub direction: Direction,
    pub disposition: Disposition,
    /// Seconds from start to end.
    pub duration: u64,
    /// Billable seconds: from answer to end (0 if unanswered).
    pub billsec: u64,
    #[serde(default)]
    pub recording_id: Option<String>,
    /// Name or id of the node that carried the call.
    #[serde(default)]
    pub node: String,
}

/// Times are RFC 3339 text for people (JSON) and microseconds since the epoch in the
/// binary encodings (log entries, stored records): parsing and formatting text was a
/// large part of a CDR's storage and export cost.
mod time_repr {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            t.serialize(s)
        } else {
            s.serialize_i64(t.timestamp_micros())
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        if d.is_human_readable() {
            DateTime::<Utc>::deserialize(d)
        } else {
            let micros = i64::deserialize(d)?;
            DateTime::from_timestamp_micros(micros)
                .ok_or_else(|| serde::de::Error::custom(format!("time {micros} µs out of range")))
        }
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            #[derive(Serialize)]
            struct Wrap<'a>(#[serde(with = "super")] &'a DateTime<Utc>);
            t.as_ref().map(Wrap).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(with = "super")] DateTime<Utc>);
            Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
        }
    }
}

/// CSV header, the same columns in the same order as the JSON fields.
pub const CSV_COLUMNS: [&str; 12] = [
    "id",
    "start",
    "answer",
    "end",
    "caller",
    "callee",
    "direction",
    "disposition",
    "duration",
    "billsec",
    "recording_id",
    "node",
];

/// Longest accepted caller/callee/node/recording id, in bytes.
pub const MAX_FIELD_LEN: usize = 256;

/// Why a CDR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cdr {id}: field `{field}`: {problem}")]
pub struct CdrInvalid {
    pub id: Uuid,
    pub field: &'static str,
    pub problem: String,
}

/// RFC 3339 in UTC, as chrono's `to_rfc3339_opts(AutoSi, true)` writes it (the JSON
/// form), but several times faster: CSV export formats three of these per row.
fn rfc3339(t: &DateTime<Utc>) -> String {
    let mut buf = [0u8; RFC3339_MAX];
    match write_rfc3339(t, &mut buf) {
        Some(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        None => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    }
}

/// Longest text [`write_rfc3339`] writes: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
const RFC3339_MAX: usize = 30;

/// Write `t` as [`rfc3339`] does into `out` without allocating; returns the length,
/// or `None` for what only chrono formats (years outside 0..=9999, leap seconds).
fn write_rfc3339(t: &DateTime<Utc>, out: &mut [u8; RFC3339_MAX]) -> Option<usize> {
    use chrono::{Datelike, Timelike};
    fn digits(out: &mut [u8], mut v: u32) {
        for slot in out.iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    let year = t.year();
    let nanos = t.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return None;
    }
    out[..20].copy_from_slice(b"0000-00-00T00:00:00Z");
    digits(&mut out[0..4], year as u32);
    digits(&mut out[5..7], t.month());
    digits(&mut out[8..10], t.day());
    digits(&mut out[11..13], t.hour());
    digits(&mut out[14..16], t.minute());
    digits(&mut out[17..19], t.second());
    let (frac, width) = if nanos == 0 {
        (0, 0)
    } else if nanos.is_multiple_of(1_000_000) {
        (nanos / 1_000_000, 3)
    } else if nanos.is_multiple_of(1_000) {
        (nanos / 1_000, 6)
    } else {
        (nanos, 9)
    };
    let mut len = 19;
    if width > 0 {
        out[19] = b'.';
        digits(&mut out[20..20 + width], frac);
        len = 20 + width;
    }
    out[len] = b'Z';
    Some(len + 1)
}

/// Bytes to reserve for the JSON of CDRs whose stored encodings have `stored_lens`:
/// field names and RFC 3339 times make the JSON about 2.5× the stored size. Reserving
/// it up front saves growing a multi-megabyte page buffer by copying it again and
/// again.
pub fn json_capacity(stored_lens: impl Iterator<Item = usize>) -> usize {
    stored_lens.map(|n| n * 5 / 2 + 16).sum::<usize>() + 256
}

/// A stored CDR decoded without copying its strings: the CSV export reads a million
/// of these, and allocating every field of every row was most of its cost.
///
/// Decodes the same binary encoding as [`Cdr`] (times as microseconds).
#[derive(Debug, Deserialize)]
pub struct CdrRef<'a> {
    pub id: Uuid,
    pub start: i64,
    pub answer: Option<i64>,
    pub end: i64,
    pub caller: &'a str,
    pub callee: &'a str,
    pub direction: Direction,
    pub disposition: Disposition,
    pub duration: u64,
    pub billsec: u64,
    #[serde(borrow)]
    pub recording_id: Option<&'a str>,
    pub node: &'a str,
}

impl CdrRef<'_> {
    /// Append this CDR as one CSV row ([`CSV_COLUMNS`] order, the same text as
    /// [`Cdr::csv_record`]) without allocating.
    pub fn write_csv<W: std::io::Write>(&self, w: &mut csv::Writer<W>) -> csv::Result<()> {
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        w.write_field(self.id.hyphenated().encode_lower(&mut id).as_bytes())?;
        for t in [Some(self.start), self.answer, Some(self.end)] {
            let mut buf = [0u8; RFC3339_MAX];
            match t.map(|m| DateTime::from_timestamp_micros(m).ok_or(m)) {
                None => w.write_field(b"")?,
                Some(Ok(t)) => match write_rfc3339(&t, &mut buf) {
                    Some(n) => w.write_field(&buf[..n])?,
                    None => w.write_field(rfc3339(&t))?,
                },
                // Cannot be stored (decode of a Cdr refuses it); written as the number.
                Some(Err(m)) => w.write_field(m.to_string())?,
            }
        }
        w.write_field(csv_text(self.caller).as_bytes())?;
        w.write_field(csv_text(self.callee).as_bytes())?;
        w.write_field(self.direction.as_str())?;
        w.write_field(self.disposition.as_str())?;
        let mut n = [0u8; 20];
        w.write_field(u64_text(self.duration, &mut n))?;
        w.write_field(u64_text(self.billsec, &mut n))?;
        w.write_field(csv_text(self.recording_id.unwrap_or("")).as_bytes())?;
        w.write_field(csv_text(self.node).as_bytes())?;
        w.write_record(None::<&[u8]>)
    }
}

/// A text cell as it is safe to open in a spreadsheet: a value that a spreadsheet
/// would run as a formula (starting with `=`, `@`, a tab or a carriage return, or
/// with `+` / `-` followed by anything but a plain number) gets a leading `'`, so
/// `=HYPERLINK(...)` in a caller name is shown as text. Phone numbers such as
/// `+4930123456` and `-1` are left as they are (a spreadsheet reads them as numbers,
/// never as formulas).
pub fn csv_text(value: &str) -> std::borrow::Cow<'_, str> {
    let plain_number = |rest: &str| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit());
    let risky = match value.as_bytes().first() {
        Some(b'=' | b'@' | b'\t' | b'\r') => true,
        Some(b'+' | b'-') => !plain_number(&value[1..]),
        _ => false,
    };
    if risky {
        std::borrow::Cow::Owned(format!("'{value}"))
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

/// The same output as [`Cdr`]'s `Serialize`: RFC 3339 text times for JSON, microseconds
/// in binary formats; no field is copied on the way.
impl Serialize for CdrRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        /// A stored time (µs since the epoch), written as [`Cdr`] writes its times.
        struct Time(i64);
        impl Serialize for Time {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let t = match DateTime::from_timestamp_micros(self.0) {
                    Some(t) if s.is_human_readable() => t,
                    _ => return s.serialize_i64(self.0),
                };
                let mut buf = [0u8; RFC3339_MAX];
                match write_rfc3339(&t, &mut buf) {
                    Some(n) => s.serialize_str(
                        std::str::from_utf8(&buf[..n]).map_err(serde::ser::Error::custom)?,
                    ),
                    None => s.serialize_str(&rfc3339(&t)),
                }
            }
        }
        let mut st = s.serialize_struct("Cdr", 12)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("start", &Time(self.start))?;
        st.serialize_field("answer", &self.answer.map(Time))?;
        st.serialize_field("end", &Time(self.end))?;
        st.serialize_field("caller", self.caller)?;
        st.serialize_field("callee", self.callee)?;
        st.serialize_field("direction", &self.direction)?;
        st.serialize_field("disposition", &self.disposition)?;
        st.serialize_field("duration", &self.duration)?;
        st.serialize_field("billsec", &self.billsec)?;
        st.serialize_field("recording_id", &self.recording_id)?;
        st.serialize_field("node", self.node)?;
        st.end()
    }
}

/// Decimal text of `v` in `buf` (no allocation).
fn u64_text(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

impl Cdr {
    /// Check the rules that serde cannot: times in order, strings bounded and printable.
    pub fn validate(&self) -> Result<(), CdrInvalid> {
        let bad = |field, problem: &str| {
            Err(CdrInvalid {
                id: self.id,
                field,
                problem: problem.to_string(),
            })
        };
        if self.end < self.start {
            return bad("end", "is before `start`");
        }
        if let Some(answer) = self.answer {
            if answer < self.start || answer > self.end {
                return bad("answer", "must lie between `start` and `end`");
            }
        }
        for (field, value) in [
            ("caller", self.caller.as_str()),
            ("callee", self.callee.as_str()),
            ("node", self.node.as_str()),
            ("recording_id", self.recording_id.as_deref().unwrap_or("")),
        ] {
            if value.len() > MAX_FIELD_LEN {
                return bad(field, &format!("longer than {MAX_FIELD_LEN} bytes"));
            }
            if value.chars().any(|c| c.is_control()) {
                return bad(field, "contains a control character");
            }
        }
        if self.caller.is_empty() {
            return bad("caller", "is empty");
        }
        if self.callee.is_empty() {
            return bad("callee", "is empty");
        }
        Ok(())
    }

    /// The CSV row, in [`CSV_COLUMNS`] order.
    pub fn csv_record(&self) -> [String; 12] {
        [
            self.id.to_string(),
            rfc3339(&self.start),
            self.answer.as_ref().map(rfc3339).unwrap_or_default(),
            rfc3339(&self.end),
            csv_text(&self.caller).into_owned(),
            csv_text(&self.callee).into_owned(),
            self.direction.as_str().to_string(),
            self.disposition.as_str().to_string(),
            self.duration.to_string(),
            self.billsec.to_string(),
            csv_text(self.recording_id.as_deref().unwrap_or_default()).into_owned(),
            csv_text(&self.node).into_owned(),
        ]
    }

    /// Build a CDR for a call with the given times (durations derived from them).
    pub fn new_call(
        caller: &str,
        callee: &str,
        start: DateTime<Utc>,
        answer: Option<DateTime<Utc>>,
        end: DateTime<Utc>,
        node: &str,
    ) -> Cdr {
        let duration = (end - start).num_seconds().max(0) as u64;
        let billsec = answer
            .map(|a| (end - a).num_seconds().max(0) as u64)
            .unwrap_or(0);
        Cdr {
            id: Uuid::new_v4(),
            start,
            answer,
            end,
            caller: caller.to_string(),
            callee: callee.to_string(),
            direction: Direction::Internal,
            disposition: if answer.is_some() {
                Disposition::Answered
            } else {
                Disposition::NoAnswer
            },
            duration,
            billsec,
            recording_id: None,
            node: node.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn csv_columns_match_json_fields_in_order() {
        let cdr = Cdr::new_call(
            "100",
            "200",
            t("2026-01-01T10:00:00Z"),
            Some(t("2026-01-01T10:00:05Z")),
            t("2026-01-01T10:01:05Z"),
            "a",
        );
        let json = serde_json::to_value(&cdr).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        // serde_json without preserve_order sorts keys; compare as sets and check the
        // struct order through a serialized string instead.
        let text = serde_json::to_string(&cdr).unwrap();
        let mut last = 0;
        for col in CSV_COLUMNS {
            assert!(keys.contains(&col), "{col} missing from JSON");
            let pos = text.find(&format!("\"{col}\":")).unwrap();
            assert!(pos >= last, "{col} out of order");
            last = pos;
        }
        assert_eq!(cdr.billsec, 60);
        assert_eq!(cdr.duration, 65);
        assert_eq!(cdr.csv_record()[2], "2026-01-01T10:00:05Z");
    }

    #[test]
    fn binary_encoding_keeps_times_exact_and_json_stays_rfc3339() {
        let cdr = Cdr::new_call(
            "100",
            "200",
            t("2026-01-01T10:00:00.123456Z"),
            Some(t("2026-01-01T10:00:05Z")),
            t("2026-01-01T10:01:05Z"),
            "a",
        );
        let bin = bincode::serialize(&cdr).unwrap();
        assert_eq!(bincode::deserialize::<Cdr>(&bin).unwrap(), cdr);
        let json = serde_json::to_value(&cdr).unwrap();
        assert_eq!(json["start"], "2026-01-01T10:00:00.123456Z");
        assert_eq!(json["answer"], "2026-01-01T10:00:05Z");
        let mut unanswered = cdr.clone();
        unanswered.answer = None;
        let bin = bincode::serialize(&unanswered).unwrap();
        assert_eq!(bincode::deserialize::<Cdr>(&bin).unwrap(), unanswered);
        assert!(serde_json::to_value(&unanswered).unwrap()["answer"].is_null());
    }

    #[test]
    fn fast_rfc3339_matches_chrono() {
        for text in [
            "2026-01-01T10:00:00Z",
            "1999-12-31T23:59:59.5Z",
            "2026-03-04T05:06:07.123Z",
            "2026-03-04T05:06:07.123456Z",
            "2026-03-04T05:06:07.123456789Z",
            "2026-03-04T05:06:07.000001Z",
            "0001-01-01T00:00:00Z",
        ] {
            let v = t(text);
            assert_eq!(
                rfc3339(&v),
                v.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                "{text}"
            );
        }
    }

    #[test]
    fn spreadsheet_formulas_are_neutralised_and_phone_numbers_kept() {
        for (cell, shown) in [
            (
                "=HYPERLINK(\"http://evil\",\"x\")",
                "'=HYPERLINK(\"http://evil\",\"x\")",
            ),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
            ("-2+3", "'-2+3"),
            ("\t=1", "'\t=1"),
            ("+4930123456", "+4930123456"),
            ("-1", "-1"),
            ("100", "100"),
            ("Smith <100>", "Smith <100>"),
            ("", ""),
            ("+", "'+"),
        ] {
            assert_eq!(csv_text(cell), shown, "{cell:?}");
        }
    }

    #[test]
    fn borrowed_csv_row_equals_the_owned_one() {
        let formula = Cdr::new_call(
            "=HYPERLINK(\"http://x\",\"call me\")",
            "+4930123456",
            t("2026-03-04T05:06:07Z"),
            None,
            t("2026-03-04T05:06:08Z"),
            "-node",
        );
        let mut quoted = Cdr::new_call(
            "Smith, \"J\" <100>",
            "200",
            t("2026-03-04T05:06:07.123456Z"),
            Some(t("2026-03-04T05:06:08Z")),
            t("2026-03-04T05:16:07.5Z"),
            "node one",
        );
        quoted.recording_id = Some("rec-1".into());
        let unanswered = Cdr::new_call(
            "100",
            "200",
            t("0001-01-01T00:00:00Z"),
            None,
            t("9999-12-31T23:59:59.999999999Z"),
            "",
        );
        for cdr in [quoted, unanswered, formula] {
            // Stored times keep microseconds: compare with the stored form.
            let bin = bincode::serialize(&cdr).unwrap();
            let stored: Cdr = bincode::deserialize(&bin).unwrap();
            let mut owned = csv::Writer::from_writer(Vec::new());
            owned.write_record(stored.csv_record()).unwrap();
            let view: CdrRef = bincode::deserialize(&bin).unwrap();
            let mut borrowed = csv::Writer::from_writer(Vec::new());
            view.write_csv(&mut borrowed).unwrap();
            assert_eq!(
                String::from_utf8(borrowed.into_inner().unwrap()).unwrap(),
                String::from_utf8(owned.into_inner().unwrap()).unwrap()
            );
            // JSON and binary encodings of the view equal those of the record.
            assert_eq!(
                serde_json::to_string(&view).unwrap(),
                serde_json::to_string(&stored).unwrap()
            );
            assert_eq!(bincode::serialize(&view).unwrap(), bin);
        }
        let mut buf = [0u8; 20];
        assert_eq!(u64_text(0, &mut buf), b"0");
        assert_eq!(u64_text(u64::MAX, &mut buf), b"18446744073709551615");
    }

    #[test]
    fn validate_names_the_field() {
        let mut cdr = Cdr::new_call(
            "100",
            "200",
            t("2026-01-01T10:00:00Z"),
            None,
            t("2026-01-01T10:01:00Z"),
            "a",
        );
        assert!(cdr.validate().is_ok());
        cdr.end = t("2025-01-01T10:00:00Z");
        assert_eq!(cdr.validate().unwrap_err().field, "end");
        cdr.end = t("2026-01-01T10:01:00Z");
        cdr.caller = "a\u{0}b".into();
        assert_eq!(cdr.validate().unwrap_err().field, "caller");
    }
}
