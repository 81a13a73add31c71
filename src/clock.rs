//! The crate's one clock: wall time as whole seconds since the Unix epoch, as every format
//! and status field records it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 if the system clock is before it).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch (0 if the system clock is before it).
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Nanoseconds since the Unix epoch (0 if the system clock is before it): for names that
/// must differ between calls, never for durations.
pub fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A time for people: RFC 3339 in UTC with how long ago (or how far ahead) it is, as in
/// `2026-12-01T21:40:00Z (5m 3s ago)` or `2026-12-08T21:40:00Z (in 6d 23h)`.
pub fn describe_secs(secs: u64) -> String {
    describe_at(secs, now_secs())
}

/// [`describe_secs`] as seen at `now`.
pub fn describe_at(secs: u64, now: u64) -> String {
    let time = i64::try_from(secs)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map_or_else(
            || format!("{secs} seconds after the epoch"),
            |t| t.to_string(),
        );
    let age = if secs <= now {
        format!("{} ago", span(now - secs))
    } else {
        format!("in {}", span(secs - now))
    };
    format!("{time} ({age})")
}

/// A length of time in its two largest units: `3d 4h`, `5m 3s`, `0s`.
fn span(seconds: u64) -> String {
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let Some(first) = units.iter().position(|(size, _)| seconds >= *size) else {
        return "0s".into();
    };
    let mut rest = seconds;
    let mut parts = Vec::new();
    for (size, unit) in &units[first..(first + 2).min(units.len())] {
        let n = rest / size;
        rest %= size;
        if n > 0 || parts.is_empty() {
            parts.push(format!("{n}{unit}"));
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_read_as_rfc_3339_with_their_age() {
        let now = 1_796_158_800; // 2026-12-01T21:00:00Z
        assert_eq!(
            crate::clock::describe_at(now - 303, now),
            "2026-12-01T20:54:57Z (5m 3s ago)"
        );
        assert_eq!(
            crate::clock::describe_at(now + 7 * 86_400 - 3_600, now),
            "2026-12-08T20:00:00Z (in 6d 23h)"
        );
        assert_eq!(
            crate::clock::describe_at(now, now),
            "2026-12-01T21:00:00Z (0s ago)"
        );
        assert_eq!(
            crate::clock::describe_at(now - 7_200, now),
            "2026-12-01T19:00:00Z (2h ago)"
        );
    }
}
