//! Byte ranges (RFC 9110 §14) served from a complete stored object.
//!
//! One range per request: a multi-range request is answered with the whole
//! object (200), which RFC 9110 allows and which spares the proxy
//! `multipart/byteranges`.

/// What to send for a `Range` header against an object of `len` bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RangeAnswer {
    /// No usable range: send the whole object with 200.
    Full,
    /// Send bytes `start..end` with 206.
    Partial {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Interprets `range` (the header's value) for an object of `len` bytes.
pub fn resolve(range: Option<&str>, len: u64) -> RangeAnswer {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (a.trim(), b.trim()) {
        ("", suffix) => match num(suffix) {
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(n) if len > 0 => RangeAnswer::Partial {
                start: len.saturating_sub(n),
                end: len,
            },
            Some(_) => RangeAnswer::Unsatisfiable,
            None => RangeAnswer::Full,
        },
        (first, last) => {
            let Some(start) = num(first) else {
                return RangeAnswer::Full;
            };
            let end = if last.is_empty() {
                len
            } else {
                match num(last) {
                    Some(l) if l >= start => l.saturating_add(1).min(len),
                    _ => return RangeAnswer::Full,
                }
            };
            if start >= len {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial { start, end }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_resolve() {
        let p = |s, e| RangeAnswer::Partial { start: s, end: e };
        assert_eq!(resolve(None, 10), RangeAnswer::Full);
        assert_eq!(resolve(Some("bytes=0-4"), 10), p(0, 5));
        assert_eq!(resolve(Some("bytes=5-"), 10), p(5, 10));
        assert_eq!(resolve(Some("bytes=-3"), 10), p(7, 10));
        assert_eq!(resolve(Some("bytes=-30"), 10), p(0, 10));
        assert_eq!(resolve(Some("bytes=8-100"), 10), p(8, 10));
        assert_eq!(resolve(Some("bytes=10-"), 10), RangeAnswer::Unsatisfiable);
        assert_eq!(resolve(Some("bytes=-0"), 10), RangeAnswer::Unsatisfiable);
        assert_eq!(resolve(Some("bytes=5-2"), 10), RangeAnswer::Full);
        assert_eq!(resolve(Some("bytes=0-1,3-4"), 10), RangeAnswer::Full);
        assert_eq!(resolve(Some("items=0-1"), 10), RangeAnswer::Full);
        assert_eq!(resolve(Some("bytes=0-0"), 0), RangeAnswer::Unsatisfiable);
    }

    proptest! {
        #[test]
        fn partial_ranges_lie_inside_the_object(s in "\\PC{0,20}", len in 0u64..10_000) {
            if let RangeAnswer::Partial { start, end } = resolve(Some(&format!("bytes={s}")), len) {
                prop_assert!(start < end && end <= len);
            }
        }
    }
}
