//! TLS for client and peer listeners: certificates from files or generated (`--auto-tls`),
//! client certificate verification with CRLs, etcd's cipher-suite and version flags. ALPN offers
//! `h2` (gRPC clients require it) and `http/1.1`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::ring;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// What etcd's TLS flags say, for one kind of listener.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub crl_file: Option<PathBuf>,
    pub auto_tls: bool,
    pub cipher_suites: Vec<String>,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
    /// etcd's --peer-cert-allowed-cn: a client certificate must have this common name.
    pub allowed_cn: Option<String>,
    /// etcd's --peer-cert-allowed-hostname: a client certificate must be valid for this name.
    pub allowed_hostname: Option<String>,
}

impl TlsSettings {
    /// Whether these settings can serve TLS at all.
    pub fn is_configured(&self) -> bool {
        self.auto_tls || (self.cert_file.is_some() && self.key_file.is_some())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

fn read_error(path: &Path, source: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid(format!("cannot use {}: {source}", path.display()))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_error(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_error(path, e))?;
    if certs.is_empty() {
        return Err(read_error(path, "no certificate found"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| read_error(path, e))
}

fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let raw = fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let pem: Result<Vec<_>, _> = CertificateRevocationListDer::pem_slice_iter(&raw).collect();
    match pem {
        Ok(crls) if !crls.is_empty() => Ok(crls),
        // Go accepts a DER file too.
        _ => Ok(vec![CertificateRevocationListDer::from(raw)]),
    }
}

fn protocol_version(name: &str) -> Result<Option<&'static SupportedProtocolVersion>, TlsError> {
    match name {
        "" => Ok(None),
        "TLS1.2" => Ok(Some(&rustls::version::TLS12)),
        "TLS1.3" => Ok(Some(&rustls::version::TLS13)),
        "TLS1.0" | "TLS1.1" => Err(TlsError::Invalid(format!(
            "TLS version {name} is not supported by keelson (TLS1.2 and TLS1.3 are)"
        ))),
        other => Err(TlsError::Invalid(format!("unknown TLS version {other:?}"))),
    }
}

fn versions(settings: &TlsSettings) -> Result<Vec<&'static SupportedProtocolVersion>, TlsError> {
    let min = protocol_version(settings.min_version.as_deref().unwrap_or(""))?;
    let max = protocol_version(settings.max_version.as_deref().unwrap_or(""))?;
    let rank = |v: &SupportedProtocolVersion| {
        if v.version == rustls::ProtocolVersion::TLSv1_3 {
            13
        } else {
            12
        }
    };
    let lowest = min.map_or(12, rank);
    let highest = max.map_or(13, rank);
    if lowest > highest {
        return Err(TlsError::Invalid(
            "--tls-min-version is above --tls-max-version".into(),
        ));
    }
    Ok([&rustls::version::TLS12, &rustls::version::TLS13]
        .into_iter()
        .filter(|v| (lowest..=highest).contains(&rank(v)))
        .collect())
}

/// The name Go gives a suite, for matching `--cipher-suites`.
fn go_names(suite: &rustls::SupportedCipherSuite) -> Vec<String> {
    let name = format!("{:?}", suite.suite());
    let mut names = vec![name.clone()];
    if let Some(short) = name.strip_suffix("_CHACHA20_POLY1305_SHA256") {
        names.push(format!("{short}_CHACHA20_POLY1305"));
    }
    names
}

fn crypto_provider(settings: &TlsSettings) -> Result<rustls::crypto::CryptoProvider, TlsError> {
    let mut provider = ring::default_provider();
    if settings.cipher_suites.is_empty() {
        return Ok(provider);
    }
    for wanted in &settings.cipher_suites {
        if !provider
            .cipher_suites
            .iter()
            .any(|s| go_names(s).contains(wanted))
        {
            return Err(TlsError::Invalid(format!(
                "unexpected TLS cipher suite {wanted:?}"
            )));
        }
    }
    // The list limits TLS 1.2; TLS 1.3 suites are not configurable, as in Go.
    provider.cipher_suites.retain(|s| {
        s.version() == &rustls::version::TLS13
            || go_names(s)
                .iter()
                .any(|n| settings.cipher_suites.contains(n))
    });
    Ok(provider)
}

/// Where `--auto-tls` keeps its generated certificate.
pub fn auto_tls_dir(data_dir: &Path, kind: &str) -> PathBuf {
    data_dir.join("fixtures").join(kind)
}

/// Generates (or reuses) a self-signed certificate for `hosts`, as etcd's `--auto-tls` does.
fn self_signed(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    fs::create_dir_all(dir).map_err(|source| TlsError::Read {
        path: dir.display().to_string(),
        source,
    })?;
    let mut names: Vec<String> = hosts.to_vec();
    if names.is_empty() {
        names.push("localhost".into());
    }
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsError::Invalid(format!("cannot generate a certificate: {e}")))?;
    let write = |path: &Path, text: String| {
        fs::write(path, text).map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    write(&cert_path, certified.cert.pem())?;
    write(&key_path, certified.signing_key.serialize_pem())?;
    Ok((cert_path, key_path))
}

/// Builds the server side of TLS. `auto_dir` and `hosts` serve `--auto-tls`.
pub fn server_config(
    settings: &TlsSettings,
    auto_dir: &Path,
    hosts: &[String],
) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert_path, key_path) = match (&settings.cert_file, &settings.key_file) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ if settings.auto_tls => self_signed(auto_dir, hosts)?,
        _ => {
            return Err(TlsError::Invalid(
                "TLS needs --cert-file and --key-file (or --auto-tls)".into(),
            ))
        }
    };
    let certs = load_certs(&cert_path)?;
    let key = load_key(&key_path)?;
    let provider = Arc::new(crypto_provider(settings)?);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(settings)?)
        .map_err(|e| TlsError::Invalid(format!("TLS versions: {e}")))?;
    let builder = if settings.client_cert_auth {
        let ca = settings.trusted_ca_file.as_ref().ok_or_else(|| {
            TlsError::Invalid("--client-cert-auth needs --trusted-ca-file".into())
        })?;
        let mut roots = RootCertStore::empty();
        for cert in load_certs(ca)? {
            roots.add(cert).map_err(|e| read_error(ca, e))?;
        }
        let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        if let Some(crl) = &settings.crl_file {
            verifier = verifier.with_crls(load_crls(crl)?);
        }
        let verifier = verifier
            .build()
            .map_err(|e| TlsError::Invalid(format!("client certificate verification: {e}")))?;
        if settings.allowed_cn.is_some() || settings.allowed_hostname.is_some() {
            builder.with_client_cert_verifier(Arc::new(AllowedIdentity {
                inner: verifier,
                cn: settings.allowed_cn.clone(),
                hostname: settings.allowed_hostname.clone(),
            }))
        } else {
            builder.with_client_cert_verifier(verifier)
        }
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Invalid(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// etcd's allowed CN / hostname of peer client certificates, checked after the CA check.
#[derive(Debug)]
struct AllowedIdentity {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    cn: Option<String>,
    hostname: Option<String>,
}

/// Whether `pattern` (a SAN DNS name, possibly `*.example.com`) covers `name`.
fn dns_name_matches(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.to_ascii_lowercase(), name.to_ascii_lowercase());
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
        None => pattern == name,
    }
}

/// The subject common name of a DER certificate as Go reads it (the last CN attribute wins).
pub fn common_name(der: &[u8]) -> Option<String> {
    certificate_names(der).and_then(|(cns, _)| cns.into_iter().last())
}

/// The subject common names and SAN names (DNS and IP) of a DER certificate.
fn certificate_names(der: &[u8]) -> Option<(Vec<String>, Vec<String>)> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cns = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(dns) => sans.push(dns.to_string()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => sans
                        .push(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).ok()?).to_string()),
                    16 => sans.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).ok()?).to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Some((cns, sans))
}

impl rustls::server::danger::ClientCertVerifier for AllowedIdentity {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let refused = |why: &str| rustls::Error::General(why.to_string());
        let (cns, sans) = certificate_names(end_entity)
            .ok_or_else(|| refused("unreadable client certificate"))?;
        if let Some(cn) = &self.cn {
            if !cns.iter().any(|c| c == cn) {
                tracing::warn!(allowed = %cn, got = ?cns, "rejected peer certificate: CommonName authentication failed");
                return Err(refused("CommonName authentication failed"));
            }
        }
        if let Some(host) = &self.hostname {
            if !sans.iter().any(|san| dns_name_matches(san, host)) {
                tracing::warn!(allowed = %host, got = ?sans, "rejected peer certificate: hostname authentication failed");
                return Err(refused("hostname authentication failed"));
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
}

/// Where Debian keeps the system's trusted CAs, used when no --peer-trusted-ca-file is given
/// (etcd uses the system pool then).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The client side of TLS between members: the peer certificate as the client identity, the
/// peer CA to verify the other member, or (with --peer-auto-tls and no CA) no verification, as
/// etcd's self-signed peer certificates cannot be verified either.
pub fn peer_client_config(
    settings: &TlsSettings,
    auto_dir: &Path,
    hosts: &[String],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(crypto_provider(settings)?);
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(settings)?)
        .map_err(|e| TlsError::Invalid(format!("TLS versions: {e}")))?;
    let builder = match &settings.trusted_ca_file {
        Some(ca) => builder.with_root_certificates(roots_from(ca)?),
        None if settings.auto_tls => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer { provider })),
        None => builder.with_root_certificates(roots_from(Path::new(SYSTEM_CA_BUNDLE))?),
    };
    let identity = match (&settings.cert_file, &settings.key_file) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        _ if settings.auto_tls => Some(self_signed(auto_dir, hosts)?),
        _ => None,
    };
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(&cert)?, load_key(&key)?)
            .map_err(|e| TlsError::Invalid(format!("peer certificate and key: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// TLS towards the Kubernetes API from a pod: its service account's CA, no client certificate.
pub fn kube_api_client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(format!("TLS versions: {e}")))?
        .with_root_certificates(roots_from(ca)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn roots_from(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| read_error(path, e))?;
    }
    Ok(roots)
}

/// etcd's --peer-auto-tls: members present self-signed certificates that nobody can verify;
/// the handshake still checks that the peer holds the key of the certificate it shows.
#[derive(Debug)]
struct AcceptAnyServer {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_tls_generates_once_and_builds() {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = TlsSettings {
            auto_tls: true,
            ..Default::default()
        };
        let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        server_config(&settings, dir.path(), &hosts).expect("auto TLS config");
        let first = fs::read(dir.path().join("cert.pem")).expect("cert written");
        server_config(&settings, dir.path(), &hosts).expect("again");
        assert_eq!(
            fs::read(dir.path().join("cert.pem")).expect("cert kept"),
            first
        );
    }

    #[test]
    fn allowed_names_match_as_go_does() {
        assert!(dns_name_matches("member-1.etcd", "member-1.etcd"));
        assert!(dns_name_matches("*.etcd.svc", "m1.etcd.svc"));
        assert!(!dns_name_matches("*.etcd.svc", "a.m1.etcd.svc"));
        assert!(!dns_name_matches("member-1.etcd", "member-2.etcd"));
        let cert = rcgen::generate_simple_self_signed(vec![
            "peer.example".to_string(),
            "127.0.0.1".to_string(),
        ])
        .expect("certificate");
        let (_, sans) = certificate_names(cert.cert.der()).expect("readable");
        assert!(sans.contains(&"peer.example".to_string()), "{sans:?}");
        assert!(sans.contains(&"127.0.0.1".to_string()), "{sans:?}");
    }

    #[test]
    fn etcd_flag_values_are_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let hosts = vec!["localhost".to_string()];
        let bad_suite = TlsSettings {
            auto_tls: true,
            cipher_suites: vec!["TLS_RSA_WITH_RC4_128_SHA".into()],
            ..Default::default()
        };
        assert!(server_config(&bad_suite, dir.path(), &hosts).is_err());
        let good_suite = TlsSettings {
            auto_tls: true,
            cipher_suites: vec!["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into()],
            ..Default::default()
        };
        assert!(server_config(&good_suite, dir.path(), &hosts).is_ok());
        let old = TlsSettings {
            auto_tls: true,
            min_version: Some("TLS1.1".into()),
            ..Default::default()
        };
        assert!(server_config(&old, dir.path(), &hosts).is_err());
    }
}
