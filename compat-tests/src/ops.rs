//! Helpers of the operations tests (`tests/ops_*.rs`): a throwaway PKI made at test time, HTTP
//! over http and https, raw TLS handshakes, etcdctl against any endpoint, Prometheus text
//! parsing, promtool and jsonnet, and running a server binary until it exits.
//!
//! Certificates are X.509 v3 with key usages and extended key usages: rustls (keelson's TLS)
//! refuses v1 certificates, which Go's crypto/tls (etcd's) still accepts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::etcdctl::{etcdctl_binary, ETCDCTL_TIMEOUT};
use crate::server::{inherited_env_names, ClientTls, ServerKind, ServerTrust};

/// The longest one HTTP request or TLS exchange of these tests may take.
pub const NET_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a server binary that should exit at once (bad flags) may run.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// A throwaway PKI
// ---------------------------------------------------------------------------------------

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA, a server certificate (SAN 127.0.0.1 and localhost), a good client certificate, a
/// client certificate revoked by [`Pki::crl`], and a CA of its own with a client certificate
/// that the first CA did not sign. Everything lives in a temporary directory.
pub struct Pki {
    dir: TempDir,
    pub ca: PathBuf,
    pub server: CertFiles,
    pub client: CertFiles,
    pub revoked_client: CertFiles,
    pub other_ca: PathBuf,
    pub stranger_client: CertFiles,
    /// Client certificates signed by `ca` whose common names are user names of the auth tests
    /// (`root`, `example.com`).
    pub root_client: CertFiles,
    pub example_client: CertFiles,
    /// A CRL signed by `ca` that revokes `revoked_client` (PEM).
    pub crl: PathBuf,
}

const REVOKED_SERIAL: u8 = 0x42;

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.remove(DnType::CommonName);
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "keelson compat tests");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(SerialNumber::from_slice(&[1]));
    params
}

fn leaf_params(
    common_name: &str,
    sans: &[&str],
    serial: u8,
    usages: &[ExtendedKeyUsagePurpose],
) -> CertificateParams {
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("valid subject alternative names");
    params.distinguished_name.remove(DnType::CommonName);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages.to_vec();
    params.serial_number = Some(SerialNumber::from_slice(&[serial]));
    params.use_authority_key_identifier_extension = true;
    params
}

impl Pki {
    /// Generates everything (ECDSA P-256 keys) into a new temporary directory.
    pub fn generate() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("keelson-pki-")
            .tempdir()
            .expect("create a temporary directory for certificates");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            path
        };

        let ca_key = KeyPair::generate().expect("CA key");
        let ca_parameters = ca_params("keelson test CA");
        let ca_cert = ca_parameters
            .self_signed(&ca_key)
            .expect("self-sign the CA");
        let ca_path = write("ca.pem", &ca_cert.pem());
        let ca = Issuer::new(ca_parameters, ca_key);

        let issue = |issuer: &Issuer<'_, KeyPair>, params: CertificateParams, stem: &str| {
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, issuer).expect("sign a certificate");
            CertFiles {
                cert: write(&format!("{stem}.pem"), &cert.pem()),
                key: write(&format!("{stem}-key.pem"), &key.serialize_pem()),
            }
        };
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let server = issue(
            &ca,
            leaf_params(
                "keelson-server",
                &["127.0.0.1", "localhost"],
                2,
                &[ServerAuth, ClientAuth],
            ),
            "server",
        );
        let client = issue(&ca, leaf_params("client", &[], 3, &[ClientAuth]), "client");
        let root_client = issue(
            &ca,
            leaf_params("root", &[], 4, &[ClientAuth]),
            "root-client",
        );
        let example_client = issue(
            &ca,
            leaf_params("example.com", &[], 5, &[ClientAuth]),
            "example-client",
        );
        let revoked_client = issue(
            &ca,
            leaf_params("revoked-client", &[], REVOKED_SERIAL, &[ClientAuth]),
            "revoked-client",
        );

        let other_key = KeyPair::generate().expect("other CA key");
        let other_params = ca_params("some other CA");
        let other_cert = other_params.self_signed(&other_key).expect("self-sign");
        let other_ca = write("other-ca.pem", &other_cert.pem());
        let other = Issuer::new(other_params, other_key);
        let stranger_client = issue(
            &other,
            leaf_params("client", &[], 3, &[ClientAuth]),
            "stranger-client",
        );

        let crl = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from_slice(&[1]),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from_slice(&[REVOKED_SERIAL]),
                revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&ca)
        .expect("sign the CRL");
        let crl = write("crl.pem", &crl.pem().expect("CRL as PEM"));

        Pki {
            dir,
            ca: ca_path,
            server,
            client,
            revoked_client,
            other_ca,
            stranger_client,
            root_client,
            example_client,
            crl,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `--cert-file`, `--key-file` and `--trusted-ca-file` with `--client-cert-auth`.
    pub fn mtls_flags(&self) -> Vec<String> {
        let mut flags = self.server_tls_flags();
        flags.extend(["--trusted-ca-file".into(), path_arg(&self.ca)]);
        flags.push("--client-cert-auth".into());
        flags
    }

    /// `--cert-file` and `--key-file` only.
    pub fn server_tls_flags(&self) -> Vec<String> {
        vec![
            "--cert-file".into(),
            path_arg(&self.server.cert),
            "--key-file".into(),
            path_arg(&self.server.key),
        ]
    }

    /// The harness's TLS: trust the CA, present the good client certificate.
    pub fn client_tls(&self) -> ClientTls {
        ClientTls::ca(&self.ca).identity(&self.client.cert, &self.client.key)
    }

    /// etcdctl's flags for the CA and, if given, a client certificate.
    pub fn etcdctl_flags(&self, identity: Option<&CertFiles>) -> Vec<String> {
        let mut flags = vec![format!("--cacert={}", self.ca.display())];
        if let Some(id) = identity {
            flags.push(format!("--cert={}", id.cert.display()));
            flags.push(format!("--key={}", id.key.display()));
        }
        flags
    }
}

pub fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

// ---------------------------------------------------------------------------------------
// Raw TLS
// ---------------------------------------------------------------------------------------

/// Accepts any server certificate (for `--auto-tls` members) while offering every
/// signature scheme, P-521 included (etcd's self-signed certificates use it).
#[derive(Debug)]
struct AcceptAnything;

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ECDSA_NISTP521_SHA512,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::RSA_PKCS1_SHA256,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::RSA_PKCS1_SHA512,
        ]
    }
}

pub fn read_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap_or_else(|e| panic!("read certificates from {}: {e}", path.display()))
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("parse certificates in {}: {e}", path.display()))
}

/// A rustls client configuration: `tls`'s trust and identity, these ALPN protocols, and
/// only `versions` when given (e.g. `&[&rustls::version::TLS12]`).
pub fn rustls_config(
    tls: &ClientTls,
    alpn: &[&str],
    versions: Option<&[&'static rustls::SupportedProtocolVersion]>,
) -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions.unwrap_or(rustls::DEFAULT_VERSIONS))
        .expect("protocol versions");
    let builder = match &tls.trust {
        ServerTrust::CaFile(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca) {
                roots.add(cert).expect("add a CA certificate");
            }
            builder.with_root_certificates(roots)
        }
        ServerTrust::InsecureSkipVerify => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything)),
    };
    let mut config = match &tls.identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                read_certs(cert),
                PrivateKeyDer::from_pem_file(key)
                    .unwrap_or_else(|e| panic!("read key {}: {e}", key.display())),
            )
            .expect("client certificate and key"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config
}

/// What one TLS exchange showed.
#[derive(Debug)]
pub struct TlsExchange {
    pub alpn: Option<String>,
    pub version: Option<rustls::ProtocolVersion>,
    pub peer_certificates: Vec<CertificateDer<'static>>,
    /// The status line of `GET <path>` over HTTP/1.1, when a path was given.
    pub status_line: Option<String>,
}

/// Connects to `address` (`127.0.0.1:port`), completes a TLS handshake with `config`, and, if
/// `http_path` is given, sends `GET <path>` over HTTP/1.1 and reads the status line. A server
/// that refuses the client certificate can do it after the client's side of a TLS 1.3
/// handshake has finished, so a refusal shows as an error of the handshake or of that request.
pub async fn tls_exchange(
    address: &str,
    config: ClientConfig,
    http_path: Option<&str>,
) -> Result<TlsExchange, String> {
    let exchange = async {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect {address}: {e}"))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from("127.0.0.1").expect("an IP server name");
        let mut stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let (_, connection) = stream.get_ref();
        let mut outcome = TlsExchange {
            alpn: connection
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            version: connection.protocol_version(),
            peer_certificates: connection
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
            status_line: None,
        };
        if let Some(path) = http_path {
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| format!("send the request: {e}"))?;
            let mut answer = Vec::new();
            stream
                .read_to_end(&mut answer)
                .await
                .map_err(|e| format!("read the answer: {e}"))?;
            let text = String::from_utf8_lossy(&answer);
            let line = text.lines().next().unwrap_or_default().to_string();
            if line.is_empty() {
                return Err("the connection closed without an answer".to_string());
            }
            outcome.status_line = Some(line);
        }
        Ok(outcome)
    };
    match tokio::time::timeout(NET_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => panic!("TLS exchange with {address} did not finish within {NET_TIMEOUT:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON, failing the test otherwise.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// An HTTP client for a member: plain, or with `tls` for an https URL.
pub fn http_client(tls: Option<&ClientTls>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .timeout(NET_TIMEOUT)
        .connect_timeout(NET_TIMEOUT)
        .http1_only();
    if let Some(tls) = tls {
        builder = builder.use_preconfigured_tls(rustls_config(tls, &["http/1.1"], None));
    }
    builder.build().expect("build an HTTP client")
}

/// `method url` (body empty), answered within [`NET_TIMEOUT`].
pub async fn http(tls: Option<&ClientTls>, method: &str, url: &str) -> HttpAnswer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let response = http_client(tls)
        .request(method.clone(), url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e:?}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .text()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"));
    HttpAnswer {
        status,
        headers,
        body,
    }
}

/// `GET url`.
pub async fn get(tls: Option<&ClientTls>, url: &str) -> HttpAnswer {
    http(tls, "GET", url).await
}

// ---------------------------------------------------------------------------------------
// etcdctl at any endpoint
// ---------------------------------------------------------------------------------------

/// `etcdctl --endpoints=<endpoint> <args>` (API v3), bounded by [`ETCDCTL_TIMEOUT`]; for
/// endpoints the harness's [`crate::etcdctl`] does not name (a second client URL).
pub async fn etcdctl_at(endpoint: &str, args: &[&str]) -> Output {
    let mut command = Command::new(etcdctl_binary());
    for name in inherited_env_names("ETCDCTL_") {
        command.env_remove(name);
    }
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", etcdctl_binary().display()));
    match tokio::time::timeout(ETCDCTL_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.expect("collect etcdctl's output"),
        Err(_) => panic!("etcdctl {args:?} did not finish within {ETCDCTL_TIMEOUT:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// A server binary that must exit by itself
// ---------------------------------------------------------------------------------------

/// Runs `kind`'s binary with `args` and `env` (inherited `ETCD_*` removed) until it exits;
/// fails the test if it runs longer than [`EXIT_TIMEOUT`] (then it is killed). Callers pass
/// a data dir and loopback URLs of their own, so that a binary that wrongly starts does not
/// touch the default ports.
pub async fn run_until_exit(kind: ServerKind, args: &[String], env: &[(&str, &str)]) -> Output {
    let binary = kind.binary();
    let mut command = Command::new(&binary);
    for name in inherited_env_names("ETCD_") {
        command.env_remove(name);
    }
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
    match tokio::time::timeout(EXIT_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.expect("collect the server's output"),
        Err(_) => panic!(
            "{} {args:?} was expected to exit by itself but still ran after {EXIT_TIMEOUT:?}",
            kind.name()
        ),
    }
}

/// Safe flags for a member that is expected to exit before serving: its own data dir and
/// free loopback ports, so a binary that starts anyway does not collide with anything.
pub fn isolated_flags(dir: &Path) -> Vec<String> {
    let ports: Vec<u16> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect();
    let client = format!("http://127.0.0.1:{}", ports[0]);
    let peer = format!("http://127.0.0.1:{}", ports[1]);
    vec![
        "--data-dir".into(),
        dir.join("data").display().to_string(),
        "--listen-client-urls".into(),
        client.clone(),
        "--advertise-client-urls".into(),
        client,
        "--listen-peer-urls".into(),
        peer.clone(),
        "--initial-advertise-peer-urls".into(),
        peer.clone(),
        "--initial-cluster".into(),
        format!("default={peer}"),
    ]
}

/// The first line of `text` that is not blank.
pub fn first_line(text: &str) -> &str {
    text.lines().find(|l| !l.trim().is_empty()).unwrap_or("")
}

// ---------------------------------------------------------------------------------------
// Prometheus text format
// ---------------------------------------------------------------------------------------

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

/// A metric family: its `# TYPE`, its `# HELP` and its samples.
#[derive(Debug, Clone, Default)]
pub struct Family {
    pub name: String,
    pub kind: String,
    pub help: Option<String>,
    pub samples: Vec<Sample>,
}

impl Family {
    /// Label names of the family's samples (for a histogram, without `le`), sorted.
    pub fn label_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .samples
            .iter()
            .flat_map(|s| s.labels.keys().cloned())
            .filter(|n| n != "le" && n != "quantile")
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// A parsed `/metrics` answer.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub text: String,
    pub families: BTreeMap<String, Family>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut families: BTreeMap<String, Family> = BTreeMap::new();
        let mut current: Option<String> = None;
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let keyword = parts.next().unwrap_or_default();
                let name = parts.next().unwrap_or_default().to_string();
                let tail = parts.next().unwrap_or_default().to_string();
                let family = families.entry(name.clone()).or_insert_with(|| Family {
                    name: name.clone(),
                    ..Default::default()
                });
                match keyword {
                    "TYPE" => family.kind = tail,
                    "HELP" => family.help = Some(tail),
                    _ => {}
                }
                current = Some(name);
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let sample = parse_sample(line)
                .unwrap_or_else(|| panic!("not a Prometheus sample line: {line:?}"));
            let owner = match &current {
                Some(name) if sample.name.starts_with(name.as_str()) => name.clone(),
                _ => sample.name.clone(),
            };
            families
                .entry(owner.clone())
                .or_insert_with(|| Family {
                    name: owner,
                    ..Default::default()
                })
                .samples
                .push(sample);
        }
        Scrape {
            text: text.to_string(),
            families,
        }
    }

    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.get(name)
    }

    /// Samples named exactly `name` (e.g. `x_bucket`) whose labels include `labels`.
    pub fn samples<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> Vec<&'a Sample> {
        self.families
            .values()
            .flat_map(|f| f.samples.iter())
            .filter(|s| s.name == name)
            .filter(|s| labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .collect()
    }

    /// The value of the one sample named `name` with these labels; 0 when there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name, labels).iter().map(|s| s.value).sum()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let mut end = None;
        loop {
            // skip separators
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || *c == ' ' {
                    chars.next();
                } else {
                    break;
                }
            }
            match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(other) => value.push(other),
                        None => return None,
                    },
                    '"' => break,
                    other => value.push(other),
                }
            }
            labels.insert(key.trim().to_string(), value);
        }
        let end = end?;
        rest = &after[end + 1..];
    }
    let value_text = rest.split_whitespace().next()?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Renders a series selector for promtool's test files: `name{k="v",...}`.
pub fn series_selector(name: &str, labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{name}{{{}}}", inner.join(","))
}

// ---------------------------------------------------------------------------------------
// promtool and jsonnet
// ---------------------------------------------------------------------------------------

pub const PROMTOOL: &str = "/usr/bin/promtool";
pub const JSONNET: &str = "/usr/bin/jsonnet";
pub const ETCD_MIXIN_GZ: &str = "/usr/share/doc/etcd-server/etcd-mixin/mixin.libsonnet.gz";

/// Fails the test with how to get `path` when it is missing.
#[track_caller]
pub fn require_tool(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install Debian's `{package}` (scripts/install-deps.sh --test, or \
         `make test-deps`)"
    );
}

/// Runs a tool with `args` (and `stdin`), bounded by [`ETCDCTL_TIMEOUT`].
pub async fn run_tool(program: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("write {program}'s stdin: {e}"));
    }
    match tokio::time::timeout(ETCDCTL_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("{program}: {e}")),
        Err(_) => panic!("{program} {args:?} did not finish within {ETCDCTL_TIMEOUT:?}"),
    }
}

/// `promtool check metrics` on a scrape: (exit code, the problems it printed, one a line).
pub async fn promtool_check_metrics(text: &str) -> (Option<i32>, Vec<String>) {
    require_tool(PROMTOOL, "prometheus");
    let output = run_tool(PROMTOOL, &["check", "metrics"], Some(text)).await;
    let mut problems: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&output.stderr).lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    problems.sort();
    (output.status.code(), problems)
}

/// Compiles the etcd mixin's `prometheusAlerts` into `dir/etcd-alerts.json` (JSON is YAML,
/// so promtool reads it as a rule file) and returns its path.
pub async fn compile_etcd_mixin_alerts(dir: &Path) -> PathBuf {
    require_tool(JSONNET, "jsonnet");
    assert!(
        Path::new(ETCD_MIXIN_GZ).exists(),
        "{ETCD_MIXIN_GZ} is missing: install Debian's `etcd-server`"
    );
    let output = run_tool("gzip", &["-dc", ETCD_MIXIN_GZ], None).await;
    assert!(
        output.status.success(),
        "gzip -dc {ETCD_MIXIN_GZ} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(dir.join("mixin.libsonnet"), &output.stdout).expect("write the mixin");
    let wrapper = dir.join("alerts.jsonnet");
    std::fs::write(&wrapper, "(import 'mixin.libsonnet').prometheusAlerts\n")
        .expect("write the jsonnet wrapper");
    let wrapper_arg = path_arg(&wrapper);
    let jpath = path_arg(dir);
    let output = run_tool(JSONNET, &["-J", &jpath, &wrapper_arg], None).await;
    assert!(
        output.status.success(),
        "jsonnet failed on the etcd mixin: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rules = dir.join("etcd-alerts.json");
    std::fs::write(&rules, &output.stdout).expect("write the compiled alert rules");
    rules
}
