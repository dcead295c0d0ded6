//! TLS to the cluster's database, asked for as libpq asks: `sslmode` and `sslrootcert` in the
//! database URL.
//!
//! - no `sslmode`, `disable`, `allow`, `prefer`: no TLS (a database on a trusted network, or
//!   the loopback);
//! - `require`: encrypted, the server's certificate not checked — unless `sslrootcert` names a
//!   CA file, which makes it `verify-ca`, as in libpq;
//! - `verify-ca`: the certificate must chain to the CA named by `sslrootcert` (required: any
//!   public CA would vouch for anybody's server);
//! - `verify-full`: and name the host connected to.
//!
//! The driver underneath reads neither `sslrootcert` nor the `verify-*` modes, so [`split_url`]
//! (pure) takes them out of the URL it is given and says what was asked; [`connector`] builds
//! the rustls connector for it.

use std::path::PathBuf;
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::StoreError;

/// How much the connection to the database is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Off,
    /// Encrypted; the server's certificate is not checked.
    Encrypt,
    /// Encrypted; the certificate chains to a trusted CA.
    VerifyCa,
    /// Encrypted; the certificate chains to a trusted CA and names the host.
    VerifyFull,
}

/// What the URL asks of TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: TlsMode,
    /// The CA certificates (PEM) to trust instead of the public web's.
    pub root_cert: Option<PathBuf>,
}

/// Splits a database URL into what the driver reads and the TLS settings: `sslrootcert` is
/// taken out, and `sslmode` is left as the driver knows it (`require`, or none). A connection
/// string of `key=value` pairs is passed on as it is, and refused if it asks for TLS.
pub fn split_url(url: &str) -> Result<(String, TlsSettings), String> {
    let off = TlsSettings {
        mode: TlsMode::Off,
        root_cert: None,
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        let asks_tls = url.split_whitespace().any(|kv| match kv.split_once('=') {
            Some(("sslmode", m)) => !matches!(m, "disable" | "allow" | "prefer"),
            Some((k, _)) => k == "sslrootcert",
            None => false,
        });
        if asks_tls {
            return Err("TLS settings are read from a URL: write it as \
                 postgres://user:password@host:5432/database?sslmode=verify-full"
                .into());
        }
        return Ok((url.to_string(), off));
    }
    // The query is taken apart as text, not as a form: the driver percent-decodes its values
    // and reads `+` as it is, and a URL may name several hosts, which URL parsers refuse.
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let decode = |v: &str| percent_decode_str(v).decode_utf8_lossy().into_owned();
    let mut mode = None;
    let mut root_cert = None;
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match decode(k).as_str() {
            "sslmode" => mode = Some(decode(v)),
            "sslrootcert" => root_cert = Some(PathBuf::from(decode(v))),
            _ => kept.push(pair),
        }
    }
    if let Some(p) = root_cert.as_ref().filter(|p| !p.is_absolute()) {
        return Err(format!(
            "sslrootcert {} is not an absolute path; name the CA file from the root (/…): the \
             engine may run in another directory",
            p.display()
        ));
    }
    let mode =
        match mode.as_deref() {
            None | Some("disable" | "allow" | "prefer") => TlsMode::Off,
            Some("require") if root_cert.is_some() => TlsMode::VerifyCa,
            Some("require") => TlsMode::Encrypt,
            Some("verify-ca") if root_cert.is_none() => return Err(
                "sslmode=verify-ca needs the CA to trust: add sslrootcert=/path/ca.pem (or use \
                 verify-full, which checks the server's name against the public CAs)"
                    .into(),
            ),
            Some("verify-ca") => TlsMode::VerifyCa,
            Some("verify-full") => TlsMode::VerifyFull,
            Some(other) => {
                return Err(format!(
                    "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, \
                 verify-full"
                ))
            }
        };
    if mode != TlsMode::Off {
        kept.push("sslmode=require");
    } else if root_cert.is_some() {
        return Err(
            "sslrootcert is given but no TLS is asked for: add sslmode=verify-full (or \
             verify-ca, require)"
                .into(),
        );
    }
    let rebuilt = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rebuilt, TlsSettings { mode, root_cert }))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The connector for `s` (`None`: no TLS).
pub fn connector(s: &TlsSettings) -> Result<Option<MakeRustlsConnect>, StoreError> {
    let bad = |m: String| StoreError::Unavailable(m);
    if s.mode == TlsMode::Off {
        return Ok(None);
    }
    let mut roots = RootCertStore::empty();
    match &s.root_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    bad(format!(
                        "sslrootcert {} cannot be read as PEM certificates: {e}",
                        path.display()
                    ))
                })?;
            if certs.is_empty() {
                return Err(bad(format!(
                    "sslrootcert {} holds no certificate",
                    path.display()
                )));
            }
            for c in certs {
                roots.add(c).map_err(|e| {
                    bad(format!(
                        "a certificate of sslrootcert {} is not usable: {e}",
                        path.display()
                    ))
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS cannot be set up: {e}")))?;
    let config = match s.mode {
        TlsMode::VerifyFull => builder.with_root_certificates(roots).with_no_client_auth(),
        TlsMode::VerifyCa | TlsMode::Encrypt => {
            let full = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| bad(format!("TLS cannot be set up: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient {
                    full,
                    check_chain: s.mode == TlsMode::VerifyCa,
                }))
                .with_no_client_auth()
        }
        TlsMode::Off => return Ok(None),
    };
    Ok(Some(MakeRustlsConnect::new(config)))
}

/// The checks of `require` (none of the certificate) and `verify-ca` (its chain, not its
/// name); the handshake's signatures are always verified.
#[derive(Debug)]
struct Lenient {
    full: Arc<rustls::client::WebPkiServerVerifier>,
    check_chain: bool,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.check_chain {
            return Ok(ServerCertVerified::assertion());
        }
        match self
            .full
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.full.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.full.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.full.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(url: &str) -> (String, TlsMode) {
        let (u, s) = split_url(url).unwrap();
        (u, s.mode)
    }

    #[test]
    fn no_sslmode_or_a_lax_one_means_no_tls() {
        for url in [
            "postgres://u@h/db",
            "postgres://u@h/db?sslmode=disable",
            "postgres://u@h/db?sslmode=prefer",
            "postgresql://u@h/db?sslmode=allow&application_name=x",
        ] {
            let (u, m) = mode(url);
            assert_eq!(m, TlsMode::Off, "{url}");
            assert!(!u.contains("sslmode"), "{u}");
        }
        assert_eq!(
            mode("postgresql://u@h/db?sslmode=allow&application_name=x").0,
            "postgresql://u@h/db?application_name=x"
        );
        // A connection string of key=value pairs goes on as it is, unless it asks for TLS.
        assert_eq!(
            mode("host=h sslmode=disable"),
            ("host=h sslmode=disable".to_string(), TlsMode::Off)
        );
        let e = split_url("host=h sslmode=require").unwrap_err();
        assert!(e.contains("?sslmode=verify-full"), "{e}");
    }

    #[test]
    fn the_strict_modes_and_the_root_cert_are_taken_out_of_the_url() {
        let (u, s) =
            split_url("postgres://u:p@h:5432/db?sslmode=verify-full&sslrootcert=/etc/ca.pem")
                .unwrap();
        assert_eq!(u, "postgres://u:p@h:5432/db?sslmode=require");
        assert_eq!(s.mode, TlsMode::VerifyFull);
        assert_eq!(s.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(
            mode("postgres://h/db?sslmode=verify-ca&sslrootcert=/ca.pem").1,
            TlsMode::VerifyCa
        );
        assert_eq!(mode("postgres://h/db?sslmode=require").1, TlsMode::Encrypt);
        // As in libpq, a CA file makes `require` check the chain.
        assert_eq!(
            mode("postgres://h/db?sslmode=require&sslrootcert=/ca.pem").1,
            TlsMode::VerifyCa
        );
        // Other parameters go on byte for byte (the driver reads `+` as it is), and a URL may
        // name several hosts.
        assert_eq!(
            mode("postgres://u@h1:5432,h2:5432/db?options=-c%20x%3D1&application_name=a+b&sslmode=verify-full&sslrootcert=%2Fcerts%2Fa+b.pem").0,
            "postgres://u@h1:5432,h2:5432/db?options=-c%20x%3D1&application_name=a+b&sslmode=require"
        );
        let (_, s) =
            split_url("postgres://h/db?sslmode=verify-full&sslrootcert=%2Fcerts%2Fa+b.pem")
                .unwrap();
        assert_eq!(s.root_cert, Some(PathBuf::from("/certs/a+b.pem")));
    }

    #[test]
    fn a_bad_mode_or_a_root_cert_without_tls_says_what_to_write() {
        let e = split_url("postgres://h/db?sslmode=always").unwrap_err();
        assert!(e.contains("verify-full"), "{e}");
        let e = split_url("postgres://h/db?sslrootcert=/ca.pem").unwrap_err();
        assert!(e.contains("sslmode=verify-full"), "{e}");
        // verify-ca trusts only the CA named: against every public CA it would authenticate
        // nobody.
        let e = split_url("postgres://h/db?sslmode=verify-ca").unwrap_err();
        assert!(e.contains("sslrootcert="), "{e}");
        let e = split_url("postgres://h/db?sslmode=verify-full&sslrootcert=ca.pem").unwrap_err();
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn a_missing_root_cert_file_is_named() {
        let s = TlsSettings {
            mode: TlsMode::VerifyFull,
            root_cert: Some(PathBuf::from("/nonexistent/ca.pem")),
        };
        let e = connector(&s).err().unwrap().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        assert!(connector(&TlsSettings {
            mode: TlsMode::Off,
            root_cert: None
        })
        .unwrap()
        .is_none());
        assert!(connector(&TlsSettings {
            mode: TlsMode::VerifyFull,
            root_cert: None
        })
        .unwrap()
        .is_some());
    }
}
