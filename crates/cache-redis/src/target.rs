//! Redis URL validation, credential resolution and redaction.

use std::path::PathBuf;

use cache_core::{Error, ErrorKind, Result};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion};

/// What a redacted password is replaced with.
pub const REDACTED: &str = "***";

const TCP_FORM: &str = "expected redis://[[user]:password@]host[:port][/db]";
const UNIX_FORM: &str =
    "expected redis+unix:///path/to/redis.sock[?db=N] or unix:///path/to/redis.sock";

/// Where to connect, from the URL alone.
#[derive(Clone)]
pub(crate) enum Addr {
    /// Plain TCP.
    Tcp { host: String, port: u16 },
    /// TCP with TLS (`rediss://`).
    Tls { host: String, port: u16 },
    /// A unix socket.
    Unix(PathBuf),
}

impl Addr {
    /// `host:port` (IPv6 in brackets) or the socket path, for messages.
    pub(crate) fn endpoint(&self) -> String {
        match self {
            Addr::Tcp { host, port } | Addr::Tls { host, port } => {
                if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                }
            }
            Addr::Unix(path) => path.display().to_string(),
        }
    }
}

/// A validated Redis URL.
#[derive(Clone)]
pub(crate) struct ParsedUrl {
    pub(crate) addr: Addr,
    pub(crate) db: i64,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) protocol: ProtocolVersion,
    /// Password-like strings as they appear in the URL text (percent-encoded), to scrub.
    pub(crate) raw_secrets: Vec<String>,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidUrl, message)
}

/// Decode `%XX` escapes; `None` when the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn parse_protocol(value: &str) -> Result<ProtocolVersion> {
    match value {
        "2" | "resp2" => Ok(ProtocolVersion::RESP2),
        "3" | "resp3" => Ok(ProtocolVersion::RESP3),
        other => Err(invalid(format!(
            "the `protocol` parameter of the Redis URL must be resp2 or resp3, not `{other}`"
        ))),
    }
}

fn parse_db(text: &str, origin: &str) -> Result<i64> {
    match text.parse::<i64>() {
        Ok(db) if db >= 0 => Ok(db),
        _ => Err(invalid(format!(
            "the database number `{text}` in the Redis URL {origin} is not a non-negative \
             integer; {}",
            if origin == "path" {
                "expected redis://host[:port]/<db>, e.g. redis://localhost:6379/0"
            } else {
                "expected ?db=<n>, e.g. redis+unix:///run/redis.sock?db=0"
            }
        ))),
    }
}

/// Validate `input` and take it apart. Errors are [`ErrorKind::InvalidUrl`] (or
/// [`ErrorKind::InvalidConfig`] for `rediss://` without the `tls` feature) and never echo the
/// URL itself, which may hold a password.
pub(crate) fn parse_url(input: &str) -> Result<ParsedUrl> {
    let input = input.trim();
    if input.is_empty() {
        return Err(invalid(format!("the Redis URL is empty; {TCP_FORM}")));
    }
    if !input.contains("://") {
        return Err(invalid(
            "the Redis URL has no scheme; it must start with redis://, rediss:// (TLS), \
             redis+unix:// or unix:// (e.g. redis://127.0.0.1:6379/0)",
        ));
    }
    let url = url::Url::parse(input)
        .map_err(|e| invalid(format!("cannot parse the Redis URL ({e}); {TCP_FORM}")))?;
    let scheme = url.scheme().to_owned();
    let tls = match scheme.as_str() {
        "redis" => false,
        "rediss" => true,
        "redis+unix" | "unix" => return parse_unix(&url),
        other => {
            return Err(invalid(format!(
                "unsupported scheme `{other}` in the Redis URL; expected redis://, rediss:// \
                 (TLS), redis+unix:// or unix://"
            )))
        }
    };
    if tls && !cfg!(feature = "tls") {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            "rediss:// (TLS) needs the `tls` feature of cache-redis (or of cache-tiered), which is \
             not enabled; there is no plaintext fallback",
        ));
    }
    if url.fragment().is_some() {
        return Err(invalid(
            "the Redis URL has a #fragment, which is not supported (certificate checks cannot \
             be switched off through the URL)",
        ));
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
        Some(url::Host::Ipv4(v4)) => v4.to_string(),
        Some(url::Host::Ipv6(v6)) => v6.to_string(),
        _ => return Err(invalid(format!("the Redis URL has no host; {TCP_FORM}"))),
    };
    if host == "0.0.0.0" || host == "::" {
        return Err(invalid(format!(
            "the Redis URL host `{host}` is a wildcard address; give the server's address"
        )));
    }
    let port = match url.port() {
        Some(0) => {
            return Err(invalid(
                "the Redis URL port is 0; give the server's port (6379 by default)",
            ))
        }
        Some(p) => p,
        None => 6379,
    };
    let path = url.path();
    let db_text = path.strip_prefix('/').unwrap_or(path);
    let db_text = db_text.strip_suffix('/').unwrap_or(db_text);
    let db = if db_text.is_empty() {
        0
    } else {
        parse_db(db_text, "path")?
    };
    let username = if url.username().is_empty() {
        None
    } else {
        Some(percent_decode(url.username()).ok_or_else(|| {
            invalid("the user name in the Redis URL is not valid UTF-8 after percent-decoding")
        })?)
    };
    let mut raw_secrets = Vec::new();
    let password = match url.password() {
        Some(raw) => {
            raw_secrets.push(raw.to_owned());
            Some(percent_decode(raw).ok_or_else(|| {
                invalid("the password in the Redis URL is not valid UTF-8 after percent-decoding")
            })?)
        }
        None => None,
    };
    let mut protocol = ProtocolVersion::RESP2;
    for (name, value) in url.query_pairs() {
        match name.as_ref() {
            "protocol" => protocol = parse_protocol(&value)?,
            other => {
                return Err(invalid(format!(
                    "unknown parameter `{other}` in the Redis URL query; the only one supported \
                     is protocol=resp2|resp3"
                )))
            }
        }
    }
    let addr = if tls {
        Addr::Tls { host, port }
    } else {
        Addr::Tcp { host, port }
    };
    Ok(ParsedUrl {
        addr,
        db,
        username: non_empty(username),
        password: non_empty(password),
        protocol,
        raw_secrets,
    })
}

fn parse_unix(url: &url::Url) -> Result<ParsedUrl> {
    if url.fragment().is_some() {
        return Err(invalid(
            "the Redis URL has a #fragment, which is not supported",
        ));
    }
    if url.password().is_some() || !url.username().is_empty() {
        return Err(invalid(format!(
            "credentials in a unix socket URL go in the query (?user=..&pass=..), or in the \
             config's username / password; {UNIX_FORM}"
        )));
    }
    let path = url.path();
    if path.is_empty() || path == "/" {
        return Err(invalid(format!(
            "the unix socket URL has no socket path; {UNIX_FORM}"
        )));
    }
    let path = url.to_file_path().map_err(|()| {
        invalid(format!(
            "the unix socket URL has a host part or a relative path; {UNIX_FORM}"
        ))
    })?;
    let mut db = 0;
    let mut username = None;
    let mut password = None;
    let mut protocol = ProtocolVersion::RESP2;
    let mut raw_secrets = Vec::new();
    for (name, value) in url.query_pairs() {
        match name.as_ref() {
            "db" => db = parse_db(&value, "query")?,
            "user" => username = Some(value.into_owned()),
            "pass" => {
                password = Some(value.into_owned());
            }
            "protocol" => protocol = parse_protocol(&value)?,
            other => {
                return Err(invalid(format!(
                    "unknown parameter `{other}` in the Redis URL query; supported for unix \
                     sockets: db, user, pass, protocol"
                )))
            }
        }
    }
    if let Some(query) = url.query() {
        for pair in query.split('&') {
            if let Some(raw) = pair.strip_prefix("pass=") {
                raw_secrets.push(raw.to_owned());
            }
        }
    }
    Ok(ParsedUrl {
        addr: Addr::Unix(path),
        db,
        username: non_empty(username),
        password: non_empty(password),
        protocol,
        raw_secrets,
    })
}

/// `input` with its password (userinfo or `pass=` query parameter) replaced by `***`; a
/// placeholder when the URL cannot be parsed (its text could hold a password anywhere).
pub fn redact_url(input: &str) -> String {
    let Ok(mut url) = url::Url::parse(input.trim()) else {
        return "<unparsable URL, hidden>".to_owned();
    };
    if !matches!(url.scheme(), "redis" | "rediss" | "redis+unix" | "unix") {
        return "<URL with an unsupported scheme, hidden>".to_owned();
    }
    if url.password().is_some() && url.set_password(Some(REDACTED)).is_err() {
        return "<URL, hidden>".to_owned();
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "pass" {
                    REDACTED.to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Everything needed to connect, with the config's credentials applied.
#[derive(Clone)]
pub struct Target {
    /// The redis-rs connection settings (address, TLS, database, user, password, protocol).
    pub info: ConnectionInfo,
    /// `host:port` or the socket path, for messages (no credentials).
    pub endpoint: String,
    /// The ACL user (`default` when none is given).
    pub user: String,
    /// Whether a password is set.
    pub has_password: bool,
    /// Whether the URL is `rediss://`.
    pub tls: bool,
    /// Strings that must never appear in a message (passwords, decoded and encoded).
    pub secrets: Vec<String>,
}

/// Validate `url` (typed [`ErrorKind::InvalidUrl`] errors saying what is wrong) and apply the
/// overriding `username` / `password`.
pub fn resolve(url: &str, username: Option<&str>, password: Option<&str>) -> Result<Target> {
    resolve_with(url, username, password, false)
}

/// [`resolve`], for a config that has a credentials provider (`provider`): then a user needs
/// no password (the provider gives it) and a fixed password is an error.
pub fn resolve_with(
    url: &str,
    username: Option<&str>,
    password: Option<&str>,
    provider: bool,
) -> Result<Target> {
    let parsed = parse_url(url)?;
    let username = username
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .or(parsed.username.clone());
    let password = password
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .or(parsed.password.clone());
    if provider && password.is_some() {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            "both a password (in the config or the URL) and a credentials provider are set; \
             the provider gives the password at every connect: remove the fixed one",
        ));
    }
    if let (Some(user), None, false) = (&username, &password, provider) {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "Redis user `{user}` is set without a password; Redis authenticates a user only \
                 with a password (any password works for a `nopass` user)"
            ),
        ));
    }
    let mut secrets: Vec<String> = parsed.raw_secrets.clone();
    secrets.extend(parsed.password.clone());
    secrets.extend(password.clone());
    secrets.retain(|s| !s.is_empty());

    let (addr, tls) = match parsed.addr.clone() {
        Addr::Tcp { host, port } => (ConnectionAddr::Tcp(host, port), false),
        Addr::Tls { host, port } => (
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                tls_params: None,
            },
            true,
        ),
        Addr::Unix(path) => (ConnectionAddr::Unix(path), false),
    };
    let mut settings = redis::RedisConnectionInfo::default()
        .set_db(parsed.db)
        .set_protocol(parsed.protocol);
    if let Some(user) = &username {
        settings = settings.set_username(user);
    }
    if let Some(pass) = &password {
        settings = settings.set_password(pass);
    }
    let info = addr
        .into_connection_info()
        .map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("the Redis connection settings were refused: {e}"),
            )
        })?
        .set_redis_settings(settings);
    Ok(Target {
        info,
        endpoint: parsed.addr.endpoint(),
        user: username.unwrap_or_else(|| "default".to_owned()),
        has_password: password.is_some() || provider,
        tls,
        secrets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_and_message(url: &str) -> (ErrorKind, String) {
        match parse_url(url) {
            Ok(_) => (ErrorKind::NotFound, String::new()),
            Err(e) => (e.kind(), e.message().to_owned()),
        }
    }

    #[test]
    fn good_urls() -> Result<()> {
        let p = parse_url("redis://127.0.0.1:7000/3")?;
        assert_eq!(p.addr.endpoint(), "127.0.0.1:7000");
        assert_eq!(p.db, 3);
        assert!(p.username.is_none() && p.password.is_none());
        let p = parse_url("redis://localhost")?;
        assert_eq!(p.addr.endpoint(), "localhost:6379");
        assert_eq!(p.db, 0);
        let p = parse_url("redis://al%40ice:p%40ss@[::1]:6380/")?;
        assert_eq!(p.addr.endpoint(), "[::1]:6380");
        assert_eq!(p.username.as_deref(), Some("al@ice"));
        assert_eq!(p.password.as_deref(), Some("p@ss"));
        assert_eq!(p.raw_secrets, vec!["p%40ss".to_owned()]);
        let p = parse_url("redis://:pw@h/?protocol=resp3")?;
        assert_eq!(p.protocol, ProtocolVersion::RESP3);
        let p = parse_url("redis+unix:///run/redis.sock?db=2&user=u&pass=pw")?;
        assert_eq!(p.addr.endpoint(), "/run/redis.sock");
        assert_eq!((p.db, p.username.as_deref()), (2, Some("u")));
        let p = parse_url("unix:///tmp/r.sock")?;
        assert_eq!(p.addr.endpoint(), "/tmp/r.sock");
        Ok(())
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("   ", "empty"),
            ("not a url", "no scheme"),
            ("redis:/h", "no scheme"),
            ("redis://h h", "cannot parse"),
            ("redis://host:99999", "cannot parse"),
            ("http://localhost:6379", "unsupported scheme `http`"),
            ("localhost:6379", "no scheme"),
            ("localhost://h:6379", "unsupported scheme `localhost`"),
            ("redis://", "no host"),
            ("redis://:6379/0", "cannot parse"),
            ("redis://0.0.0.0:6379", "wildcard"),
            ("redis://h:0", "port is 0"),
            ("redis://h/abc", "database number `abc`"),
            ("redis://h/-1", "database number `-1`"),
            ("redis://h/0/1", "database number `0/1`"),
            ("redis://h/?foo=1", "unknown parameter `foo`"),
            ("redis://h/?protocol=resp9", "resp2 or resp3"),
            ("redis://h/#insecure", "fragment"),
            ("redis+unix://", "no socket path"),
            ("unix://host/sock", "host part"),
            ("redis+unix:///s.sock?db=x", "database number `x`"),
            (
                "redis+unix://u:p@localhost/s.sock",
                "credentials in a unix socket URL",
            ),
            ("redis+unix://u:p@/s.sock", "empty host"),
        ];
        for (url, needle) in cases {
            let (kind, message) = kind_and_message(url);
            assert_eq!(kind, ErrorKind::InvalidUrl, "{url}: {message}");
            assert!(message.contains(needle), "{url}: {message}");
        }
    }

    #[test]
    fn bad_urls_never_echo_the_password() {
        for url in [
            "redis://u:hunter2@h/notanumber",
            "redis://u:hunter2@h:0",
            "redis://u:hunter2@h/?x=1",
            "redis://u:hunter2@0.0.0.0",
            "http://u:hunter2@h",
            "redis://u:hunter2@h:99999",
            "redis+unix:///s?pass=hunter2&db=x",
        ] {
            let (_, message) = kind_and_message(url);
            assert!(!message.is_empty(), "{url}");
            assert!(!message.contains("hunter2"), "{url}: {message}");
        }
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn rediss_without_the_feature_is_a_config_error() {
        let (kind, message) = kind_and_message("rediss://h:6380");
        assert_eq!(kind, ErrorKind::InvalidConfig);
        assert!(message.contains("`tls` feature"), "{message}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn rediss_with_the_feature_is_tls() -> Result<()> {
        let t = resolve("rediss://h:6380", None, None)?;
        assert!(t.tls);
        assert!(matches!(
            t.info.addr(),
            ConnectionAddr::TcpTls {
                insecure: false,
                ..
            }
        ));
        Ok(())
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_url("redis://u:hunter2@h:1/2"), "redis://u:***@h:1/2");
        assert_eq!(redact_url("redis://h:1/"), "redis://h:1/");
        let unix = redact_url("redis+unix:///s.sock?pass=hunter2&db=1");
        assert!(!unix.contains("hunter2") && unix.contains("db=1"), "{unix}");
        assert!(!redact_url("redis//u:hunter2@h").contains("hunter2"));
        assert!(!redact_url("localhost:hunter2@h").contains("hunter2"));
    }

    #[test]
    fn config_credentials_override_the_url() -> Result<()> {
        let t = resolve("redis://u:urlpw@h", Some("alice"), Some("cfgpw"))?;
        assert_eq!(t.user, "alice");
        assert_eq!(t.info.redis_settings().password(), Some("cfgpw"));
        assert!(t.secrets.contains(&"urlpw".to_owned()));
        assert!(t.secrets.contains(&"cfgpw".to_owned()));
        let t = resolve("redis://h", None, None)?;
        assert_eq!(t.user, "default");
        assert!(!t.has_password);
        let e = resolve("redis://h", Some("bob"), None).err();
        assert_eq!(e.map(|e| e.kind()), Some(ErrorKind::InvalidConfig));
        Ok(())
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%40b").as_deref(), Some("a@b"));
        assert_eq!(percent_decode("a%4").as_deref(), Some("a%4"));
        assert_eq!(percent_decode("%zz").as_deref(), Some("%zz"));
        assert_eq!(percent_decode("%ff"), None);
    }
}
