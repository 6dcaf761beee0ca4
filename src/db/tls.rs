//! TLS to the database, with libpq's `sslmode` values (ADR 0017).
//!
//! tokio-postgres knows `sslmode=disable|prefer|require` and no `sslrootcert`, so both are
//! taken out of the connection string here and mapped onto a native-tls (OpenSSL)
//! connector:
//!
//! | sslmode       | encrypted      | certificate chain checked | host name checked |
//! |---------------|----------------|---------------------------|-------------------|
//! | `disable`     | no             | –                         | –                 |
//! | `prefer`      | if offered     | no                        | no                |
//! | `require`     | yes            | no                        | no                |
//! | `verify-ca`   | yes            | yes                       | no                |
//! | `verify-full` | yes            | yes                       | yes               |
//!
//! The chain is checked against the CAs of `sslrootcert` (a PEM file, bundles too) and
//! only those when given; without it, against the system's trust store (libpq would read
//! `~/.postgresql/root.crt`: give `sslrootcert`). `require` with `sslrootcert` is
//! `verify-ca`, as in libpq. Unix-socket connections never use TLS (`db::config`).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use anyhow::Context;
use postgres_native_tls::MakeTlsConnector;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The connection string without the options tokio-postgres does not know, and what
/// they asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct Split {
    pub conn: String,
    pub mode: SslMode,
    pub root_cert: Option<String>,
}

fn mode(v: &str) -> anyhow::Result<SslMode> {
    Ok(match v {
        "disable" => SslMode::Disable,
        "allow" | "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        other => anyhow::bail!(
            "sslmode={other:?} is not valid: disable, prefer, require, verify-ca or verify-full"
        ),
    })
}

/// Whether `conn` is a URI rather than key=value pairs (as tokio-postgres decides).
pub fn is_uri(conn: &str) -> bool {
    conn.starts_with("postgres://") || conn.starts_with("postgresql://")
}

/// Takes `sslmode` and `sslrootcert` out of a key=value string or a URI.
pub fn split(conn: &str) -> anyhow::Result<Split> {
    let mut found_mode = None;
    let mut root_cert = None;
    let rest = if let Some((head, query)) = conn.split_once('?').filter(|_| is_uri(conn)) {
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "sslmode" => found_mode = Some(mode(&v)?),
                "sslrootcert" => root_cert = Some(v),
                _ => kept.push(pair),
            }
        }
        if kept.is_empty() {
            head.to_owned()
        } else {
            format!("{head}?{}", kept.join("&"))
        }
    } else if is_uri(conn) {
        conn.to_owned()
    } else {
        // key=value pairs; values in single quotes may hold spaces.
        let mut kept = Vec::new();
        for (k, v, raw) in pairs(conn) {
            match k.as_str() {
                "sslmode" => found_mode = Some(mode(&v)?),
                "sslrootcert" => root_cert = Some(v),
                _ => kept.push(raw),
            }
        }
        kept.join(" ")
    };
    let mode = match found_mode.unwrap_or(SslMode::Prefer) {
        // libpq: `require` with a root certificate checks the chain, as verify-ca.
        SslMode::Require if root_cert.is_some() => SslMode::VerifyCa,
        m => m,
    };
    let tokio_mode = match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        _ => "require",
    };
    let sep = if is_uri(&rest) {
        if rest.contains('?') {
            "&"
        } else {
            "?"
        }
    } else {
        " "
    };
    Ok(Split {
        conn: format!("{rest}{sep}sslmode={tokio_mode}"),
        mode,
        root_cert,
    })
}

/// `key=value` pairs of a libpq keyword string, each with its raw text.
fn pairs(conn: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut chars = conn.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut key = String::new();
        while let Some(&(_, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_some_and(|(_, c)| *c == '=') {
            chars.next();
        }
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek().is_some_and(|(_, c)| *c == '\'') {
            chars.next();
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n)
                        }
                    }
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        let end = chars.peek().map_or(conn.len(), |(i, _)| *i);
        out.push((key, value, conn[start..end].to_owned()));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The connector for a split connection string.
pub fn connector(split: &Split) -> anyhow::Result<MakeTlsConnector> {
    let mut b = native_tls::TlsConnector::builder();
    match split.mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            b.danger_accept_invalid_certs(true);
        }
        SslMode::VerifyCa => {
            b.danger_accept_invalid_hostnames(true);
        }
        SslMode::VerifyFull => {}
    }
    if let Some(path) = &split.root_cert {
        // Only these CAs, as libpq: a bundle (RDS's) holds many, and the system's trust
        // store is not consulted.
        let pem = std::fs::read(path).with_context(|| format!("cannot read sslrootcert {path}"))?;
        let certs = native_tls::Certificate::stack_from_pem(&pem)
            .with_context(|| format!("sslrootcert {path} is not a PEM certificate"))?;
        anyhow::ensure!(!certs.is_empty(), "sslrootcert {path} holds no certificate");
        b.disable_built_in_roots(true);
        for cert in certs {
            b.add_root_certificate(cert);
        }
    }
    Ok(MakeTlsConnector::new(
        b.build().context("cannot set up TLS")?,
    ))
}

type Prepared = (String, MakeTlsConnector);

fn cache() -> &'static Mutex<HashMap<String, Prepared>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Prepared>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// Checks `conn`'s TLS options and prepares its connector (reading `sslrootcert`), once
/// per process and connection string. `app` calls it before connecting, so that a bad
/// option fails the start with a clear message.
pub fn prepare(conn: &str) -> anyhow::Result<(String, MakeTlsConnector)> {
    let mut cache = cache().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cache.get(conn) {
        return Ok(p.clone());
    }
    let split = split(conn)?;
    let prepared = (split.conn.clone(), connector(&split)?);
    cache.insert(conn.to_owned(), prepared.clone());
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_modes_are_taken_out_of_both_forms() {
        let s = split("host=db port=5432 sslmode=verify-full sslrootcert='/etc/my ca.pem' user=u")
            .unwrap();
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert.as_deref(), Some("/etc/my ca.pem"));
        assert_eq!(s.conn, "host=db port=5432 user=u sslmode=require");
        let s =
            split("postgres://u:p@db/x?sslmode=verify-ca&sslrootcert=%2Fca.pem&application_name=a")
                .unwrap();
        assert_eq!(s.mode, SslMode::VerifyCa);
        assert_eq!(s.root_cert.as_deref(), Some("/ca.pem"));
        assert_eq!(
            s.conn,
            "postgres://u:p@db/x?application_name=a&sslmode=require"
        );
        let s = split("postgres://db/x").unwrap();
        assert_eq!(
            (s.mode, s.conn.as_str()),
            (SslMode::Prefer, "postgres://db/x?sslmode=prefer")
        );
        let s = split("host=/run/pg dbname=x sslmode=disable").unwrap();
        assert_eq!(s.conn, "host=/run/pg dbname=x sslmode=disable");
        assert!(split("host=db sslmode=verify").is_err());
        // libpq: require with a root certificate checks the chain.
        let s = split("host=db sslmode=require sslrootcert=/ca.pem").unwrap();
        assert_eq!(s.mode, SslMode::VerifyCa);
        // `://` inside a value does not make a URI.
        let s = split("host=db password=a://b sslmode=disable").unwrap();
        assert_eq!(s.conn, "host=db password=a://b sslmode=disable");
        // What is left parses.
        for c in [
            "host=db port=5432 user=u sslmode=require",
            "postgres://u:p@db/x?application_name=a&sslmode=require",
        ] {
            c.parse::<tokio_postgres::Config>().unwrap();
        }
    }
}
