//! "Coralizing" a URL: the rewrite a publisher applies to send browsers to
//! Coral (paper §2.1). The origin host gets the Coral domain appended, and a
//! request goes to a Coral proxy's port:
//! `http://www.x.com/a` → `http://www.x.com.nyud.net:8090/a`. An origin on a
//! non-default port keeps it as an extra label:
//! `http://www.x.com:8080/a` → `http://www.x.com.8080.nyud.net:8090/a`.

/// The paper's Coral domain.
pub const DEFAULT_DOMAIN: &str = "nyud.net";

/// The port Coral proxies listen on (paper §2.1).
pub const DEFAULT_PROXY_PORT: u16 = 8090;

/// Why a URL cannot be coralized.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoralizeError {
    /// Only `http://` URLs go through Coral.
    #[error("only http:// URLs can be coralized: {0}")]
    Scheme(String),
    /// The host part is missing or not a DNS name / IPv4 address.
    #[error("the URL has no usable host name: {0}")]
    Host(String),
    /// The port is not a number.
    #[error("the URL has an invalid port: {0}")]
    Port(String),
}

/// The Coralized form of `url` under `domain`, served on `proxy_port`.
/// A URL already under `domain` is returned as it is.
pub fn coralize(url: &str, domain: &str, proxy_port: u16) -> Result<String, CoralizeError> {
    let domain = domain.trim_matches('.').to_ascii_lowercase();
    let rest = strip_prefix_ci(url.trim(), "http://")
        .ok_or_else(|| CoralizeError::Scheme(url.to_owned()))?;
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    if authority.contains('@') || authority.starts_with('[') {
        return Err(CoralizeError::Host(url.to_owned()));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => {
            let port: u16 = p.parse().map_err(|_| CoralizeError::Port(url.to_owned()))?;
            (h, Some(port))
        }
        None => (authority, None),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(CoralizeError::Host(url.to_owned()));
    }
    if host == domain || host.ends_with(&format!(".{domain}")) {
        return Ok(url.trim().to_owned());
    }
    let port_label = match port {
        None | Some(80) => String::new(),
        Some(p) => format!(".{p}"),
    };
    let proxy = if proxy_port == 80 {
        String::new()
    } else {
        format!(":{proxy_port}")
    };
    Ok(format!("http://{host}{port_label}.{domain}{proxy}{path}"))
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(url: &str) -> Result<String, CoralizeError> {
        coralize(url, DEFAULT_DOMAIN, DEFAULT_PROXY_PORT)
    }

    #[test]
    fn the_papers_example() {
        assert_eq!(
            c("http://www.x.com/a").unwrap(),
            "http://www.x.com.nyud.net:8090/a"
        );
        assert_eq!(
            c("http://www.x.com/a.jpg?x=1#f").unwrap(),
            "http://www.x.com.nyud.net:8090/a.jpg?x=1#f"
        );
        assert_eq!(
            c("http://WWW.X.com").unwrap(),
            "http://www.x.com.nyud.net:8090/"
        );
        assert_eq!(
            c("http://www.x.com?q").unwrap(),
            "http://www.x.com.nyud.net:8090/?q"
        );
    }

    #[test]
    fn a_non_default_port_becomes_a_label() {
        assert_eq!(
            c("http://www.x.com:8080/a").unwrap(),
            "http://www.x.com.8080.nyud.net:8090/a"
        );
        assert_eq!(
            c("http://www.x.com:80/a").unwrap(),
            "http://www.x.com.nyud.net:8090/a"
        );
        assert_eq!(
            c("http://127.0.0.9:8080/index.html").unwrap(),
            "http://127.0.0.9.8080.nyud.net:8090/index.html"
        );
    }

    #[test]
    fn domain_and_proxy_port_are_configurable() {
        assert_eq!(
            coralize("http://a.org/x", "coral.example.", 80).unwrap(),
            "http://a.org.coral.example/x"
        );
        assert_eq!(
            coralize("http://a.org/x", "cdn.test", 9000).unwrap(),
            "http://a.org.cdn.test:9000/x"
        );
    }

    #[test]
    fn already_coralized_is_unchanged() {
        let u = "http://www.x.com.nyud.net:8090/a";
        assert_eq!(c(u).unwrap(), u);
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(matches!(c("https://x.com/"), Err(CoralizeError::Scheme(_))));
        assert!(matches!(c("x.com/a"), Err(CoralizeError::Scheme(_))));
        assert!(matches!(c("http:///a"), Err(CoralizeError::Host(_))));
        assert!(matches!(c("http://u@x.com/"), Err(CoralizeError::Host(_))));
        assert!(matches!(c("http://[::1]/"), Err(CoralizeError::Host(_))));
        assert!(matches!(c("http://x..com/"), Err(CoralizeError::Host(_))));
        assert!(matches!(
            c("http://x.com:99999/"),
            Err(CoralizeError::Port(_))
        ));
    }
}
