//! Coralized names back into origin URLs (spec §7.1 step 2, open question 17).
//!
//! `www.x.com.nyud.net[:8090]` names `http://www.x.com/`; the long form
//! `www.x.com.http.L2.L1.L0.nyucd.net` names the same origin; a trailing
//! all-digit label is the origin's port (`www.x.com.8080.nyud.net` →
//! `http://www.x.com:8080/`). The proxy's own port in the Host header is
//! ignored. Names are lower-cased; the path and query are kept byte for
//! byte, since the URL is the cache key and origins may be case-sensitive.

/// The long form's labels between the origin host and the suffix.
const LONG_FORM: &str = ".http.l2.l1.l0";

/// An origin URL recovered from a Coralized name.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OriginUrl {
    /// The origin host, lower-case (a DNS name or an IPv4 literal).
    pub host: String,
    /// The origin port.
    pub port: u16,
    /// Path and query, exactly as requested (starts with `/`).
    pub path: String,
}

impl OriginUrl {
    /// The canonical URL: the cache key and what `Id::for_url` hashes.
    pub fn url(&self) -> String {
        if self.port == 80 {
            format!("http://{}{}", self.host, self.path)
        } else {
            format!("http://{}:{}{}", self.host, self.port, self.path)
        }
    }

    /// The `Host` header sent to the origin.
    pub fn host_header(&self) -> String {
        if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Why a name is not served.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum HostError {
    /// No Coral suffix: the proxy is not an open proxy (400).
    #[error("not a Coralized host name")]
    NotCoralized,
    /// The origin is itself a Coral name (a loop, 508).
    #[error("Coralized name points back into Coral")]
    Loop,
    /// The remainder is not a valid host name or port (400).
    #[error("invalid origin host name")]
    Invalid,
}

/// The origin named by `host` (a Host header or an absolute-form authority)
/// and `path`, given the Coral `suffixes` (lower-case, no leading dot).
pub fn parse_coralized(
    host: &str,
    path: &str,
    suffixes: &[String],
) -> Result<OriginUrl, HostError> {
    let host = host.trim();
    let name = match host.rsplit_once(':') {
        Some((n, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => n,
        Some(_) => return Err(HostError::Invalid),
        None => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let rest = suffixes
        .iter()
        .find_map(|s| {
            name.strip_suffix(s.as_str())
                .and_then(|r| r.strip_suffix('.'))
        })
        .ok_or(HostError::NotCoralized)?;
    let rest = rest.strip_suffix(LONG_FORM).unwrap_or(rest);
    if suffixes
        .iter()
        .any(|s| rest == s || rest.ends_with(&format!(".{s}")) || rest.contains(&format!(".{s}.")))
    {
        return Err(HostError::Loop);
    }
    let (host, port) = match rest.rsplit_once('.') {
        Some((h, last)) if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) => {
            // A dotted quad keeps its last octet: 10.0.0.1.nyud.net is port 80.
            if h.split('.').count() == 3 && h.split('.').all(is_octet) && last.len() <= 3 {
                (rest, 80)
            } else {
                let port: u16 = last.parse().map_err(|_| HostError::Invalid)?;
                if port == 0 {
                    return Err(HostError::Invalid);
                }
                (h, port)
            }
        }
        _ => (rest, 80),
    };
    if !valid_host(host) {
        return Err(HostError::Invalid);
    }
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(HostError::Invalid);
    }
    Ok(OriginUrl {
        host: host.to_owned(),
        port,
        path: path.to_owned(),
    })
}

fn is_octet(s: &str) -> bool {
    !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit())
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Splits an absolute-form target `http://authority/path` into its parts.
pub fn split_absolute(target: &str) -> Option<(&str, &str)> {
    let lower = target.get(..7)?;
    if !lower.eq_ignore_ascii_case("http://") {
        return None;
    }
    let rest = &target[7..];
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => Some((&rest[..i], &rest[i..])),
        Some(_) => None,
        None => Some((rest, "/")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sfx() -> Vec<String> {
        vec!["nyud.net".into(), "nyucd.net".into()]
    }

    fn p(h: &str, path: &str) -> Result<String, HostError> {
        parse_coralized(h, path, &sfx()).map(|o| o.url())
    }

    #[test]
    fn every_form_names_its_origin() {
        assert_eq!(
            p("www.x.com.nyud.net:8090", "/a.jpg").unwrap(),
            "http://www.x.com/a.jpg"
        );
        assert_eq!(
            p("WWW.X.Com.NYUD.net.", "/A?B=C").unwrap(),
            "http://www.x.com/A?B=C"
        );
        assert_eq!(
            p("www.x.com.http.L2.L1.L0.nyucd.net", "/").unwrap(),
            "http://www.x.com/"
        );
        assert_eq!(
            p("www.x.com.8080.nyud.net:8090", "/a").unwrap(),
            "http://www.x.com:8080/a"
        );
        assert_eq!(
            p("127.0.0.9.8080.nyud.net", "/o").unwrap(),
            "http://127.0.0.9:8080/o"
        );
        assert_eq!(p("10.0.0.1.nyud.net", "/").unwrap(), "http://10.0.0.1/");
        let mine = vec!["cdn.example.org".to_owned()];
        assert_eq!(
            parse_coralized("a.b.cdn.example.org", "/", &mine)
                .unwrap()
                .url(),
            "http://a.b/"
        );
    }

    #[test]
    fn bad_forms_are_refused() {
        assert_eq!(p("www.x.com", "/"), Err(HostError::NotCoralized));
        assert_eq!(p("www.x.com:8090", "/"), Err(HostError::NotCoralized));
        assert_eq!(p("nyud.net", "/"), Err(HostError::NotCoralized));
        assert_eq!(p("evilnyud.net", "/"), Err(HostError::NotCoralized));
        assert_eq!(p("www.x.com.nyud.net.nyud.net", "/"), Err(HostError::Loop));
        assert_eq!(p("www.x.com.nyucd.net.nyud.net", "/"), Err(HostError::Loop));
        assert_eq!(p("www.x.com.70000.nyud.net", "/"), Err(HostError::Invalid));
        assert_eq!(p("www.x.com.0.nyud.net", "/"), Err(HostError::Invalid));
        assert_eq!(p("www..x.nyud.net", "/"), Err(HostError::Invalid));
        assert_eq!(p("a_b.nyud.net", "/"), Err(HostError::Invalid));
        assert_eq!(p("www.x.com.nyud.net:", "/"), Err(HostError::Invalid));
        assert_eq!(p("www.x.com.nyud.net", "a"), Err(HostError::Invalid));
        assert_eq!(p("www.x.com.nyud.net", "/a b"), Err(HostError::Invalid));
    }

    #[test]
    fn absolute_targets_split() {
        assert_eq!(
            split_absolute("http://a.nyud.net:8090/x?y"),
            Some(("a.nyud.net:8090", "/x?y"))
        );
        assert_eq!(
            split_absolute("HTTP://a.nyud.net"),
            Some(("a.nyud.net", "/"))
        );
        assert_eq!(split_absolute("https://a/"), None);
        assert_eq!(split_absolute("/x"), None);
    }

    proptest! {
        #[test]
        fn coralize_then_parse_is_identity(
            labels in proptest::collection::vec("[a-z][a-z0-9-]{0,10}[a-z0-9]", 1..5),
            port in proptest::option::of(1u16..),
            path in "/[!-~]{0,40}",
        ) {
            let host = labels.join(".");
            let name = match port {
                Some(p) => format!("{host}.{p}.nyud.net:8090"),
                None => format!("{host}.NyUd.net"),
            };
            let o = parse_coralized(&name, &path, &sfx()).unwrap();
            prop_assert_eq!(o.host, host);
            prop_assert_eq!(o.port, port.unwrap_or(80));
            prop_assert_eq!(o.path, path);
        }

        #[test]
        fn arbitrary_names_never_panic(h in "\\PC{0,80}", path in "\\PC{0,20}") {
            let _ = parse_coralized(&h, &path, &sfx());
        }
    }
}
