//! RFC 9111 freshness: whether a response may be stored and shared, for how
//! long it is fresh, and how old it is.
//!
//! Wall-clock time enters as `unix` seconds handed in by the adapter (the
//! core reads no clock). The lifetime is the first of `s-maxage`, `max-age`,
//! `Expires − Date`, a heuristic of a fraction of `Date − Last-Modified`
//! (capped, and only when the response carries no explicit freshness and
//! its status is heuristically cacheable, RFC 9111 §4.2.2), or the
//! configured default for responses with no validator and no freshness
//! information (Coral used 12 h; 0 gives strict RFC behaviour).

use std::time::Duration;

use super::HttpConfig;
use super::parse::{Headers, ResponseHead};

/// What the cache may do with a response.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Storable {
    /// Store and share it, fresh for `lifetime` (zero: revalidate before each use).
    Yes {
        /// The freshness lifetime.
        lifetime: Duration,
    },
    /// Pass it through without storing.
    No,
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) into unix seconds.
/// The obsolete formats are not accepted; RFC 9111 says an invalid `Expires`
/// means "already expired", which is what `None` leads to.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let s = s.trim();
    let (_, rest) = s.split_once(", ")?;
    let mut it = rest.split(' ');
    let day: u64 = it.next()?.parse().ok()?;
    let mon = it.next()?;
    let year: i64 = it.next()?.parse().ok()?;
    let hms = it.next()?;
    if it.next()? != "GMT" || it.next().is_some() {
        return None;
    }
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == mon)? as i64
        + 1;
    let mut t = hms.split(':');
    let h: u64 = t.next()?.parse().ok()?;
    let m: u64 = t.next()?.parse().ok()?;
    let sec: u64 = t.next()?.parse().ok()?;
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 || !(1970..=9999).contains(&year) {
        return None;
    }
    let days = days_from_civil(year, month, day as i64);
    u64::try_from(days)
        .ok()
        .map(|d| d * 86_400 + h * 3600 + m * 60 + sec)
}

/// Formats unix seconds as an IMF-fixdate.
pub fn format_http_date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(m - 1) as usize];
    format!(
        "{wd}, {d:02} {mon} {y} {:02}:{:02}:{:02} GMT",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

// Howard Hinnant's civil-date algorithms.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A `Cache-Control` directive's value in seconds (`max-age=60`).
fn directive_secs(h: &Headers, name: &str) -> Option<u64> {
    h.items("cache-control").find_map(|d| {
        let (k, v) = d.split_once('=')?;
        if k.trim().eq_ignore_ascii_case(name) {
            v.trim().trim_matches('"').parse().ok()
        } else {
            None
        }
    })
}

/// Whether `Cache-Control` carries the bare directive `name` (or `name=...`).
pub fn has_directive(h: &Headers, name: &str) -> bool {
    h.items("cache-control").any(|d| {
        let k = d.split('=').next().unwrap_or("").trim();
        k.eq_ignore_ascii_case(name)
    })
}

/// Statuses that may be stored with heuristic or default freshness (RFC 9110 §15.1).
fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Whether and for how long a response to a GET may be shared, at wall time
/// `unix` when it arrived.
pub fn storable(cfg: &HttpConfig, head: &ResponseHead, unix: u64) -> Storable {
    let h = &head.headers;
    if !matches!(head.status, 200 | 203 | 204 | 300 | 301 | 308 | 404 | 410) {
        return Storable::No;
    }
    if has_directive(h, "no-store") || has_directive(h, "private") {
        return Storable::No;
    }
    // Varying on these makes a shared copy leak one client's view to others.
    let vary: Vec<&str> = h.items("vary").collect();
    if vary.iter().any(|v| {
        *v == "*" || v.eq_ignore_ascii_case("cookie") || v.eq_ignore_ascii_case("authorization")
    }) {
        return Storable::No;
    }
    if has_directive(h, "no-cache") {
        return Storable::Yes {
            lifetime: Duration::ZERO,
        };
    }
    let secs = |s: u64| Storable::Yes {
        lifetime: Duration::from_secs(s),
    };
    if let Some(s) = directive_secs(h, "s-maxage") {
        return secs(s);
    }
    if let Some(s) = directive_secs(h, "max-age") {
        return secs(s);
    }
    let date = h.get("date").and_then(parse_http_date).unwrap_or(unix);
    if h.contains("expires") {
        let exp = h.get("expires").and_then(parse_http_date).unwrap_or(0);
        return secs(exp.saturating_sub(date));
    }
    if !heuristically_cacheable(head.status) {
        return Storable::No;
    }
    if head.status == 404 || head.status == 410 {
        return Storable::Yes {
            lifetime: cfg.negative_ttl_not_found,
        };
    }
    if let Some(lm) = h.get("last-modified").and_then(parse_http_date) {
        let since = Duration::from_secs(date.saturating_sub(lm));
        let heuristic = since.mul_f64(cfg.heuristic_fraction).min(cfg.heuristic_max);
        return Storable::Yes {
            lifetime: heuristic,
        };
    }
    if h.contains("etag") {
        return Storable::Yes {
            lifetime: Duration::ZERO,
        };
    }
    Storable::Yes {
        lifetime: cfg.default_lifetime,
    }
}

/// The response's age when it arrived (RFC 9111 §4.2.3: the larger of its
/// `Age` and the apparent age `now − Date`).
pub fn initial_age(head: &ResponseHead, unix: u64) -> Duration {
    let age = head
        .headers
        .get("age")
        .and_then(|a| a.parse::<u64>().ok())
        .unwrap_or(0);
    let apparent = head
        .headers
        .get("date")
        .and_then(parse_http_date)
        .map_or(0, |d| unix.saturating_sub(d));
    Duration::from_secs(age.max(apparent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::{HeadLimits, parse_response};
    use proptest::prelude::*;

    const T0: u64 = 1_700_000_000;

    fn head(extra: &str, status: u16) -> ResponseHead {
        let raw = format!("HTTP/1.1 {status} X\r\n{extra}\r\n");
        parse_response(
            raw.as_bytes(),
            HeadLimits {
                max_bytes: 4096,
                max_headers: 32,
            },
        )
        .unwrap()
        .unwrap()
        .0
    }

    fn life(extra: &str) -> Storable {
        storable(&HttpConfig::default(), &head(extra, 200), T0)
    }

    fn yes(s: u64) -> Storable {
        Storable::Yes {
            lifetime: Duration::from_secs(s),
        }
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            format_http_date(784_111_777),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("0"), None);
    }

    #[test]
    fn explicit_freshness_in_rfc_order() {
        let d = format_http_date(T0);
        let e = format_http_date(T0 + 300);
        assert_eq!(
            life("Cache-Control: max-age=60, s-maxage=120\r\n"),
            yes(120)
        );
        assert_eq!(life("Cache-Control: max-age=60\r\n"), yes(60));
        assert_eq!(life(&format!("Date: {d}\r\nExpires: {e}\r\n")), yes(300));
        assert_eq!(life("Expires: 0\r\n"), yes(0));
        assert_eq!(life("Cache-Control: no-store\r\n"), Storable::No);
        assert_eq!(life("Cache-Control: private, max-age=60\r\n"), Storable::No);
        assert_eq!(life("Cache-Control: no-cache\r\n"), yes(0));
        assert_eq!(life("Vary: Cookie\r\n"), Storable::No);
        assert_eq!(life("Vary: *\r\n"), Storable::No);
        assert!(matches!(
            life("Vary: Accept-Encoding\r\nCache-Control: max-age=5\r\n"),
            Storable::Yes { .. }
        ));
        let cfg = HttpConfig::default();
        assert_eq!(storable(&cfg, &head("", 500), T0), Storable::No);
        assert_eq!(storable(&cfg, &head("", 206), T0), Storable::No);
        assert_eq!(
            storable(&cfg, &head("", 404), T0),
            Storable::Yes {
                lifetime: cfg.negative_ttl_not_found
            }
        );
    }

    #[test]
    fn heuristic_is_a_capped_fraction_and_default_only_without_validators() {
        let cfg = HttpConfig::default();
        let d = format_http_date(T0);
        let lm = format_http_date(T0 - 1000);
        assert_eq!(
            life(&format!("Date: {d}\r\nLast-Modified: {lm}\r\n")),
            yes(100)
        );
        let old = format_http_date(T0 - 100 * 86_400);
        assert_eq!(
            life(&format!("Date: {d}\r\nLast-Modified: {old}\r\n")),
            Storable::Yes {
                lifetime: cfg.heuristic_max
            }
        );
        assert_eq!(life("ETag: \"x\"\r\n"), yes(0));
        assert_eq!(
            life(""),
            Storable::Yes {
                lifetime: cfg.default_lifetime
            }
        );
        let strict = HttpConfig {
            default_lifetime: Duration::ZERO,
            ..HttpConfig::default()
        };
        assert_eq!(storable(&strict, &head("", 200), T0), yes(0));
    }

    #[test]
    fn age_is_the_larger_of_age_and_apparent_age() {
        let d = format_http_date(T0 - 30);
        assert_eq!(
            initial_age(&head(&format!("Date: {d}\r\nAge: 10\r\n"), 200), T0),
            Duration::from_secs(30)
        );
        assert_eq!(
            initial_age(&head(&format!("Date: {d}\r\nAge: 50\r\n"), 200), T0),
            Duration::from_secs(50)
        );
        assert_eq!(initial_age(&head("", 200), T0), Duration::ZERO);
    }

    proptest! {
        #[test]
        fn any_date_round_trips(t in 0u64..253_402_300_799) {
            prop_assert_eq!(parse_http_date(&format_http_date(t)), Some(t));
        }

        #[test]
        fn lifetime_never_exceeds_max_age(s in 0u64..1_000_000_000) {
            prop_assert_eq!(life(&format!("Cache-Control: max-age={s}\r\n")), yes(s));
        }
    }
}
