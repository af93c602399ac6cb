//! TLS to a database server, engine-neutral, with libpq's `sslmode`
//! semantics (rustls, ring); PostgreSQL negotiates it in `pg::wire`, other
//! engines use the same modes and roots:
//!
//! | mode | TLS | certificate checked |
//! |---|---|---|
//! | `disable` | never | – |
//! | `prefer` (default) | if the server offers it | no |
//! | `require` | always | no |
//! | `verify-ca` | always | chain to `sslrootcert` |
//! | `verify-full` | always | chain to `sslrootcert` and the host name |
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system` for the
//! operating system's trust store (for managed databases with public CAs).
//!
//! Without verification TLS still encrypts and checks the handshake's
//! signatures, but cannot tell the real server from an impostor: use
//! `verify-full` across untrusted networks.

use crate::{EngineError, ErrorKind};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }

    /// TLS or nothing.
    pub fn required(self) -> bool {
        matches!(
            self,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull
        )
    }

    pub fn verifies(self) -> bool {
        matches!(self, TlsMode::VerifyCa | TlsMode::VerifyFull)
    }
}

impl FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => TlsMode::Disable,
            "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            _ => {
                return Err(format!(
                    "sslmode {s:?}: expected disable, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Encrypts without checking who the server is (`prefer`, `require`); the
/// handshake's signatures are still verified.
#[derive(Debug)]
struct NoIdentityCheck(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoIdentityCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
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
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn config_err(m: impl Into<String>) -> EngineError {
    EngineError::new(ErrorKind::Unsupported, m)
}

/// `sslrootcert=system`: the operating system's trusted CAs (as libpq 16).
pub const SYSTEM_ROOTS: &str = "system";

/// Trusted roots from a PEM file, or the system's for [`SYSTEM_ROOTS`].
pub fn load_roots(path: &Path) -> Result<RootCertStore, EngineError> {
    let mut roots = RootCertStore::empty();
    let system = path == Path::new(SYSTEM_ROOTS);
    for c in load_root_ders(path)? {
        if system {
            // The system's store may hold certificates rustls cannot use.
            let _ = roots.add(c);
        } else {
            roots
                .add(c)
                .map_err(|e| config_err(format!("sslrootcert {}: {e}", path.display())))?;
        }
    }
    if roots.is_empty() {
        return Err(config_err(if system {
            "sslrootcert=system: no usable CA certificate found on this machine".to_string()
        } else {
            format!("sslrootcert {}: no certificate in the file", path.display())
        }));
    }
    Ok(roots)
}

/// The certificates of [`load_roots`], as DER (for drivers that build their
/// own TLS configuration from them).
pub fn load_root_ders(path: &Path) -> Result<Vec<CertificateDer<'static>>, EngineError> {
    if path == Path::new(SYSTEM_ROOTS) {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            return Err(config_err(format!(
                "sslrootcert=system: no trusted CA certificate found on this machine{}",
                found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            )));
        }
        return Ok(found.certs);
    }
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| config_err(format!("sslrootcert {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for c in certs {
        out.push(c.map_err(|e| config_err(format!("sslrootcert {}: {e}", path.display())))?);
    }
    if out.is_empty() {
        return Err(config_err(format!(
            "sslrootcert {}: no certificate in the file",
            path.display()
        )));
    }
    Ok(out)
}

/// The client configuration for `mode` (not for `disable`).
pub fn client_config(
    mode: TlsMode,
    root_cert: Option<&Path>,
) -> Result<Arc<ClientConfig>, EngineError> {
    let p = provider();
    let builder = ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(format!("TLS setup: {e}")))?;
    let cfg = if mode.verifies() {
        let path = root_cert.ok_or_else(|| {
            config_err(format!(
                "sslmode={} needs sslrootcert (the CA certificate that signed the server's)",
                mode.as_str()
            ))
        })?;
        let roots = Arc::new(load_roots(path)?);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, p)
            .build()
            .map_err(|e| config_err(format!("TLS setup: {e}")))?;
        let verifier: Arc<dyn ServerCertVerifier> = if mode == TlsMode::VerifyFull {
            webpki
        } else {
            Arc::new(ChainOnly(webpki))
        };
        builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoIdentityCheck(
                p.signature_verification_algorithms,
            )))
            .with_no_client_auth()
    };
    Ok(Arc::new(cfg))
}

pub fn server_name(host: &str) -> Result<ServerName<'static>, EngineError> {
    ServerName::try_from(host.to_string())
        .map_err(|e| config_err(format!("{host:?} is not a valid TLS server name: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        for m in [
            TlsMode::Disable,
            TlsMode::Prefer,
            TlsMode::Require,
            TlsMode::VerifyCa,
            TlsMode::VerifyFull,
        ] {
            assert_eq!(m.as_str().parse::<TlsMode>(), Ok(m));
        }
        assert!("allow".parse::<TlsMode>().is_err());
        assert_eq!(TlsMode::default(), TlsMode::Prefer);
        assert!(client_config(TlsMode::VerifyFull, None).is_err());
        assert!(client_config(TlsMode::Require, None).is_ok());
        assert!(client_config(TlsMode::VerifyCa, Some(Path::new("/nonexistent.pem"))).is_err());
        // The system store (Debian: ca-certificates, installed with PostgreSQL).
        if Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
            assert!(load_roots(Path::new(SYSTEM_ROOTS)).unwrap().len() > 10);
        }
    }
}
