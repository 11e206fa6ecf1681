//! Cluster CA, node certificates, join tokens and rustls configs (mutual TLS between peers).
//!
//! # Trust model
//!
//! * **Cluster CA.** `tandem init` creates a self-signed certificate authority
//!   ([`ClusterCa::generate`], ten years) and keeps it next to the node's own
//!   files (`ca.pem`, `ca.key` with mode 0600). Every certificate a node presents
//!   to a peer is issued by this CA, and the CA certificate is the only trust
//!   anchor for peer traffic: no system roots are ever consulted.
//! * **Node certificates.** A node certificate ([`ClusterCa::sign_csr`], about five
//!   years, never beyond the CA's own expiry) carries two DNS names: the shared
//!   name [`PEER_SERVER_NAME`] that clients verify servers against, and
//!   `node-<id>.tandem-peer`, from which the receiving side learns the Raft node
//!   id of its peer ([`peer_node_id`]). Its extended key usage allows both server
//!   and client authentication, since every node is both. It also names the
//!   node's **service names** ([`ServiceNames`]: `localhost`, the loopback
//!   addresses, the node's peer and API addresses, its name, the cluster's VIP), so
//!   that the node can serve its HTTPS API with it and clients that trust the
//!   cluster CA can verify it by the address they dial.
//! * **Mutual TLS.** [`server_config`] presents `[node cert, CA cert]` and checks
//!   client certificates against the CA; [`client_config`] presents the node
//!   certificate and checks the server against the CA for [`PEER_SERVER_NAME`].
//!   A certificate from any other CA fails the handshake. The server also admits
//!   clients that present *no* certificate, because a joining node has none yet:
//!   the RPC layer must refuse everything but the Join request from such a
//!   connection (check [`peer_node_id`] of the peer's certificates).
//! * **Join token.** `tdm1.<secret>.<ca-fingerprint>` ([`JoinToken`]). The secret
//!   (32 random bytes) authorises the joiner to the cluster; the fingerprint
//!   (SHA-256 of the CA certificate's DER) lets the joiner authenticate the
//!   cluster before it holds the CA certificate, like kubeadm's discovery hash:
//!   [`join_client_config`] accepts a server only if the chain it sends contains
//!   a certificate with exactly that fingerprint and the server's own
//!   certificate verifies against it. Anyone who can read the token can join,
//!   so it must be handled like a password.
//! * **CSR flow.** The joiner creates its key pair and a certificate signing
//!   request locally ([`NodeIdentity::generate_csr`]) and sends only the CSR with
//!   the token secret over the pinned connection. The CA holder checks the
//!   secret ([`JoinToken::secret_matches`]), assigns the node id and signs
//!   ([`ClusterCa::sign_csr`]), taking the names from the node id and never
//!   from the request. The answer is the node certificate and the CA
//!   certificate; the private key never leaves the joiner.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// DNS name present in every node certificate; clients verify servers against it.
pub const PEER_SERVER_NAME: &str = "tandem-peer";

/// File names inside a node's TLS directory.
const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
const NODE_CERT_FILE: &str = "node.pem";
const NODE_KEY_FILE: &str = "node.key";

/// Prefix (format version) of a join token.
const TOKEN_PREFIX: &str = "tdm1";
/// Length in hex characters of the token secret and of a SHA-256 fingerprint.
const HEX_256_LEN: usize = 64;

const CA_VALIDITY_DAYS: i64 = 3650;
const NODE_VALIDITY_DAYS: i64 = 5 * 365 + 1;
/// Certificates start being valid a day early, so that a peer whose clock
/// lags a little still accepts a freshly issued certificate.
const BACKDATE_DAYS: i64 = 1;

/// Errors of the TLS layer: reading and writing key material, issuing
/// certificates, parsing join tokens and building rustls configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot access {}: {source}; check that the path exists and is readable and writable by the tandem user", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid contents in {}: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("could not {what}: {reason}")]
    Rcgen { what: &'static str, reason: String },
    #[error("invalid join token: {reason}; copy the whole token (tdm1.<secret>.<ca-fingerprint>) or ask a cluster member for a new one")]
    BadToken { reason: String },
    #[error("certificate signing request rejected: {reason}; the joining node must send the CSR created by `tandem join`")]
    BadCsr { reason: String },
    #[error("unusable {what}: {reason}")]
    BadCert { what: &'static str, reason: String },
    #[error("cannot build the TLS configuration: {reason}")]
    Rustls { reason: String },
}

fn rcgen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> TlsError {
    move |e| TlsError::Rcgen {
        what,
        reason: e.to_string(),
    }
}

fn rustls_err<E: fmt::Display>(context: &'static str) -> impl FnOnce(E) -> TlsError {
    move |e| TlsError::Rustls {
        reason: format!("{context}: {e}"),
    }
}

/// A fresh crypto provider: this crate never relies on a process-wide default.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Lowercase hex SHA-256 of some DER bytes.
fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

// ---------------------------------------------------------------------------
// PEM and x509 helpers
// ---------------------------------------------------------------------------

/// All certificates in a PEM text, in order.
fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("malformed PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".to_string());
    }
    Ok(certs)
}

/// The first certificate in a PEM text.
fn cert_from_pem(pem: &str) -> Result<CertificateDer<'static>, String> {
    certs_from_pem(pem).map(|mut certs| certs.swap_remove(0))
}

fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| format!("malformed PEM: {e}"))?
        .ok_or_else(|| "no PRIVATE KEY block found".to_string())
}

fn parse_x509(der: &[u8]) -> Result<x509_parser::certificate::X509Certificate<'_>, String> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))
}

/// Parses `node-<id>.tandem-peer` into the id (decimal digits only).
fn node_id_from_dns_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix("node-")?
        .strip_suffix(PEER_SERVER_NAME)?
        .strip_suffix('.')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn node_dns_name(node_id: u64) -> String {
    format!("node-{node_id}.{PEER_SERVER_NAME}")
}

/// The node id named by a certificate's SANs; `None` if there is none or the
/// certificate names two different ids.
fn node_id_from_cert_der(der: &[u8]) -> Result<Option<u64>, String> {
    let cert = parse_x509(der)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subjectAltName: {e}"))?;
    let Some(san) = san else {
        return Ok(None);
    };
    let mut found = None;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
            if let Some(id) = node_id_from_dns_name(dns) {
                match found {
                    Some(prev) if prev != id => return Ok(None),
                    _ => found = Some(id),
                }
            }
        }
    }
    Ok(found)
}

/// Checks that the private key in `key_pem` belongs to the certificate `cert_der`.
fn key_matches_cert(key_pem: &str, cert_der: &[u8]) -> Result<(), String> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| format!("unreadable private key: {e}"))?;
    let cert = parse_x509(cert_der)?;
    if key.public_key_der() != cert.public_key().raw {
        return Err("the private key does not belong to the certificate".to_string());
    }
    Ok(())
}

/// Year, month and day (UTC) `days` from today, for `rcgen::date_time_ymd`.
fn ymd_in_days(days: i64) -> (i32, u8, u8) {
    use chrono::Datelike;
    let date = (chrono::Utc::now() + chrono::Duration::days(days)).date_naive();
    // month() is 1..=12 and day() is 1..=31: both fit in a u8.
    (date.year(), date.month() as u8, date.day() as u8)
}

/// Sets `not_before`/`not_after` to midnight UTC of the days that lie
/// `from_days` and `to_days` from today.
fn set_validity(params: &mut CertificateParams, from_days: i64, to_days: i64) {
    let (y, m, d) = ymd_in_days(from_days);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd_in_days(to_days);
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// A random positive 16-byte serial number.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (and parents) with mode 0700 for the directories it creates.
fn create_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_err(dir))
}

/// Writes `contents` to `path` atomically (temporary file, fsync, rename) with
/// the given Unix mode.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        #[cfg(unix)]
        {
            // The umask may have removed bits from the requested mode; set it exactly.
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}

fn read_file(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(io_err(path))
}

fn pem_err(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------
// Cluster CA
// ---------------------------------------------------------------------------

/// The cluster's certificate authority: its certificate and private key.
pub struct ClusterCa {
    pub cert_pem: String,
    key_pem: String,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Creates a new self-signed CA for the cluster `cluster_name`, valid ten years.
    pub fn generate(cluster_name: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate().map_err(rcgen_err("generate the cluster CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "tandem");
        dn.push(
            DnType::CommonName,
            format!("tandem cluster CA {cluster_name}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, -BACKDATE_DAYS, CA_VALIDITY_DAYS);
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_err("self-sign the cluster CA certificate"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `dir/ca.pem` and `dir/ca.key` (mode 0600), creating `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        create_dir(dir)?;
        write_file(&dir.join(CA_KEY_FILE), &self.key_pem, 0o600)?;
        write_file(&dir.join(CA_CERT_FILE), &self.cert_pem, 0o644)
    }

    /// Reads the CA written by [`ClusterCa::save`] and checks that the key
    /// belongs to the certificate and that the certificate is a CA.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = read_file(&cert_path)?;
        let key_pem = read_file(&key_path)?;
        let der = cert_from_pem(&cert_pem).map_err(|e| pem_err(&cert_path, e))?;
        let cert = parse_x509(&der).map_err(|e| pem_err(&cert_path, e))?;
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(pem_err(
                &cert_path,
                "the certificate is not a CA certificate; restore the cluster CA from a backup",
            ));
        }
        key_matches_cert(&key_pem, &der).map_err(|e| {
            pem_err(
                &key_path,
                format!("{e}; restore the matching ca.pem/ca.key pair from a backup"),
            )
        })?;
        Ok(Self { cert_pem, key_pem })
    }

    /// Whether `dir` holds a saved CA (`ca.pem` and `ca.key`).
    pub fn exists(dir: &Path) -> bool {
        dir.join(CA_CERT_FILE).is_file() && dir.join(CA_KEY_FILE).is_file()
    }

    /// Lowercase hex SHA-256 of the CA certificate's DER encoding (empty if
    /// `cert_pem` has been replaced by something that is not a certificate,
    /// which then matches no token).
    pub fn fingerprint(&self) -> String {
        cert_from_pem(&self.cert_pem)
            .map(|der| sha256_hex(&der))
            .unwrap_or_default()
    }

    /// Signs a node's certificate signing request, returning the node
    /// certificate (PEM). The CSR's signature (proof that the requester holds
    /// the key) is checked; the names it asks for are ignored: the certificate
    /// gets CN `tandem node <id>`, SANs [`PEER_SERVER_NAME`] and
    /// `node-<id>.tandem-peer`, EKU serverAuth and clientAuth, about five years
    /// of validity (never past the CA's expiry).
    pub fn sign_csr(&self, node_id: u64, csr_pem: &str) -> Result<String, TlsError> {
        self.sign_csr_for(node_id, csr_pem, &ServiceNames::default())
    }

    /// [`ClusterCa::sign_csr`], the certificate also naming the node's service
    /// names (the API's host names and addresses). Names that would speak for a
    /// peer identity (`tandem-peer`, `*.tandem-peer`) are never among them.
    pub fn sign_csr_for(
        &self,
        node_id: u64,
        csr_pem: &str,
        names: &ServiceNames,
    ) -> Result<String, TlsError> {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| TlsError::BadCsr {
                reason: format!("cannot parse or verify it: {e}"),
            })?;

        let ca_key =
            KeyPair::from_pem(&self.key_pem).map_err(rcgen_err("read the cluster CA key"))?;
        let ca_params = CertificateParams::from_ca_cert_pem(&self.cert_pem)
            .map_err(rcgen_err("read the cluster CA certificate"))?;
        let ca_not_after = ca_params.not_after;
        // Only used as the issuer (its subject and key identifier); never published.
        let issuer = ca_params
            .self_signed(&ca_key)
            .map_err(rcgen_err("load the cluster CA for signing"))?;

        let mut params =
            CertificateParams::new(vec![PEER_SERVER_NAME.to_string(), node_dns_name(node_id)])
                .map_err(rcgen_err("build the node certificate names"))?;
        params.subject_alt_names.extend(names.sans()?);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "tandem");
        dn.push(DnType::CommonName, format!("tandem node {node_id}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        set_validity(&mut params, -BACKDATE_DAYS, NODE_VALIDITY_DAYS);
        if params.not_after > ca_not_after {
            params.not_after = ca_not_after;
        }

        let cert = params
            .signed_by(&csr.public_key, &issuer, &ca_key)
            .map_err(rcgen_err("sign the node certificate"))?;
        Ok(cert.pem())
    }

    /// Generates a key and CSR for `node_id`, signs it and returns the
    /// complete identity (used by `tandem init` for the first node).
    pub fn issue_identity(&self, node_id: u64) -> Result<NodeIdentity, TlsError> {
        self.issue_identity_for(node_id, &ServiceNames::default())
    }

    /// [`ClusterCa::issue_identity`] with the node's service names.
    pub fn issue_identity_for(
        &self,
        node_id: u64,
        names: &ServiceNames,
    ) -> Result<NodeIdentity, TlsError> {
        let (key_pem, csr_pem) = NodeIdentity::generate_csr(node_id)?;
        let cert_pem = self.sign_csr_for(node_id, &csr_pem, names)?;
        Ok(NodeIdentity {
            cert_pem,
            key_pem,
            ca_pem: self.cert_pem.clone(),
        })
    }
}

// ---------------------------------------------------------------------------
// Service names
// ---------------------------------------------------------------------------

/// The names a node's certificate carries besides its peer identity, so that its
/// HTTPS API verifies for a client that trusts the cluster CA and dials the node
/// by any of them: always `localhost`, `127.0.0.1` and `::1`, plus what
/// [`ServiceNames::add_host`] was given (addresses and host names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceNames {
    dns: Vec<String>,
    ips: Vec<std::net::IpAddr>,
}

impl ServiceNames {
    /// Add a host: an IP address (`0.0.0.0` and `::` are skipped: they name no
    /// host), `host:port` or `[v6]:port` (the port is dropped), or a DNS name.
    /// Anything that is not a valid DNS name (a node name with spaces, say), and
    /// any name under [`PEER_SERVER_NAME`], is skipped: they could not be dialled,
    /// or would speak for a peer identity.
    pub fn add_host(&mut self, host: &str) -> &mut Self {
        let host = host.trim();
        let bare = match host.parse::<std::net::SocketAddr>() {
            Ok(sa) => sa.ip().to_string(),
            Err(_) => match host.rsplit_once(':') {
                // `name:port` (not an IPv6 address: those parse below).
                Some((h, port))
                    if !h.contains(':') && !port.is_empty() && port.parse::<u16>().is_ok() =>
                {
                    h.to_string()
                }
                _ => host.to_string(),
            },
        };
        let bare = bare.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            if !ip.is_unspecified() && !self.ips.contains(&ip) {
                self.ips.push(ip);
            }
        } else {
            let name = bare.to_ascii_lowercase();
            if is_dns_name(&name)
                && name != PEER_SERVER_NAME
                && !name.ends_with(&format!(".{PEER_SERVER_NAME}"))
                && !self.dns.contains(&name)
            {
                self.dns.push(name);
            }
        }
        self
    }

    /// The subjectAltName entries: the loopback names first, then the added ones.
    fn sans(&self) -> Result<Vec<rcgen::SanType>, TlsError> {
        let loopback = [
            std::net::IpAddr::from([127, 0, 0, 1]),
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ];
        let mut out = vec![rcgen::SanType::DnsName(
            "localhost"
                .to_string()
                .try_into()
                .map_err(rcgen_err("name the certificate"))?,
        )];
        for d in self.dns.iter().filter(|d| *d != "localhost") {
            let name = d
                .clone()
                .try_into()
                .map_err(rcgen_err("name the certificate"))?;
            out.push(rcgen::SanType::DnsName(name));
        }
        for ip in loopback
            .iter()
            .chain(self.ips.iter().filter(|ip| !loopback.contains(ip)))
        {
            out.push(rcgen::SanType::IpAddress(*ip));
        }
        Ok(out)
    }
}

/// A host name as a certificate may carry it: dot-separated labels of letters,
/// digits and inner hyphens, each 1..=63 long, 253 at most in all.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

// ---------------------------------------------------------------------------
// Node identity
// ---------------------------------------------------------------------------

/// A node's certificate, private key and the cluster CA certificate.
#[derive(Clone)]
pub struct NodeIdentity {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.node_id().ok())
            .field("ca_fingerprint", &self.ca_fingerprint().ok())
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Generates a fresh private key and a CSR for it; returns `(key_pem, csr_pem)`.
    /// The key stays on this node; only the CSR is sent to the CA holder.
    pub fn generate_csr(node_id: u64) -> Result<(String, String), TlsError> {
        let key = KeyPair::generate().map_err(rcgen_err("generate the node key"))?;
        let mut params =
            CertificateParams::new(vec![PEER_SERVER_NAME.to_string(), node_dns_name(node_id)])
                .map_err(rcgen_err("build the certificate request names"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("tandem node {node_id}"));
        params.distinguished_name = dn;
        let csr = params
            .serialize_request(&key)
            .map_err(rcgen_err("create the certificate signing request"))?;
        let csr_pem = csr
            .pem()
            .map_err(rcgen_err("encode the certificate signing request"))?;
        Ok((key.serialize_pem(), csr_pem))
    }

    /// Writes `dir/node.pem`, `dir/node.key` (mode 0600) and `dir/ca.pem`, creating `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        create_dir(dir)?;
        write_file(&dir.join(NODE_KEY_FILE), &self.key_pem, 0o600)?;
        write_file(&dir.join(NODE_CERT_FILE), &self.cert_pem, 0o644)?;
        write_file(&dir.join(CA_CERT_FILE), &self.ca_pem, 0o644)
    }

    /// Reads the identity written by [`NodeIdentity::save`] and checks it: the
    /// key belongs to the certificate, the certificate was issued by the CA and
    /// names a node id.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let cert_path = dir.join(NODE_CERT_FILE);
        let key_path = dir.join(NODE_KEY_FILE);
        let ca_path = dir.join(CA_CERT_FILE);
        let cert_pem = read_file(&cert_path)?;
        let key_pem = read_file(&key_path)?;
        let ca_pem = read_file(&ca_path)?;

        let ca_der = cert_from_pem(&ca_pem).map_err(|e| pem_err(&ca_path, e))?;
        let ca = parse_x509(&ca_der).map_err(|e| pem_err(&ca_path, e))?;
        let der = cert_from_pem(&cert_pem).map_err(|e| pem_err(&cert_path, e))?;
        let cert = parse_x509(&der).map_err(|e| pem_err(&cert_path, e))?;
        cert.verify_signature(Some(ca.public_key())).map_err(|_| {
            pem_err(
                &cert_path,
                format!(
                    "the certificate was not issued by the cluster CA in {}; \
                     restore matching files or re-join the cluster",
                    ca_path.display()
                ),
            )
        })?;
        match node_id_from_cert_der(&der) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(pem_err(
                    &cert_path,
                    "the certificate names no tandem node id; re-join the cluster",
                ))
            }
            Err(e) => return Err(pem_err(&cert_path, e)),
        }
        key_matches_cert(&key_pem, &der).map_err(|e| {
            pem_err(
                &key_path,
                format!(
                    "{e} in {}; restore matching files or re-join the cluster",
                    cert_path.display()
                ),
            )
        })?;
        Ok(Self {
            cert_pem,
            key_pem,
            ca_pem,
        })
    }

    /// Whether `dir` holds a saved identity (`node.pem`, `node.key`, `ca.pem`).
    pub fn exists(dir: &Path) -> bool {
        [NODE_CERT_FILE, NODE_KEY_FILE, CA_CERT_FILE]
            .iter()
            .all(|f| dir.join(f).is_file())
    }

    fn cert_der(&self) -> Result<CertificateDer<'static>, TlsError> {
        cert_from_pem(&self.cert_pem).map_err(|reason| TlsError::BadCert {
            what: "node certificate",
            reason,
        })
    }

    fn ca_der(&self) -> Result<CertificateDer<'static>, TlsError> {
        cert_from_pem(&self.ca_pem).map_err(|reason| TlsError::BadCert {
            what: "cluster CA certificate",
            reason,
        })
    }

    fn key_der(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        key_from_pem(&self.key_pem).map_err(|reason| TlsError::BadCert {
            what: "node private key",
            reason,
        })
    }

    /// The node id named by this identity's certificate.
    pub fn node_id(&self) -> Result<u64, TlsError> {
        let der = self.cert_der()?;
        match node_id_from_cert_der(&der) {
            Ok(Some(id)) => Ok(id),
            Ok(None) => Err(TlsError::BadCert {
                what: "node certificate",
                reason: format!("it has no `node-<id>.{PEER_SERVER_NAME}` name"),
            }),
            Err(reason) => Err(TlsError::BadCert {
                what: "node certificate",
                reason,
            }),
        }
    }

    /// Lowercase hex SHA-256 of the cluster CA certificate.
    pub fn ca_fingerprint(&self) -> Result<String, TlsError> {
        Ok(sha256_hex(&self.ca_der()?))
    }

    /// Expiry of the node certificate, seconds since the Unix epoch.
    pub fn not_after_unix(&self) -> Result<i64, TlsError> {
        let der = self.cert_der()?;
        let cert = parse_x509(&der).map_err(|reason| TlsError::BadCert {
            what: "node certificate",
            reason,
        })?;
        Ok(cert.validity().not_after.timestamp())
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der()?).map_err(|e| TlsError::BadCert {
            what: "cluster CA certificate",
            reason: e.to_string(),
        })?;
        Ok(roots)
    }

    /// `[node cert, CA cert]`: the CA goes along so that a joining node can
    /// match it against the fingerprint in its token.
    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        Ok(vec![self.cert_der()?, self.ca_der()?])
    }
}

// ---------------------------------------------------------------------------
// Join token
// ---------------------------------------------------------------------------

/// Authorises a node to join: `tdm1.<secret-hex>.<ca-fingerprint-hex>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    pub secret: String,
    pub ca_fingerprint: String,
}

impl JoinToken {
    /// A new token with a 32-byte random secret for the cluster of `ca`.
    pub fn generate(ca: &ClusterCa) -> Self {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        Self {
            secret: hex::encode(secret),
            ca_fingerprint: ca.fingerprint(),
        }
    }

    /// Whether `presented_secret` equals this token's secret, compared in
    /// constant time (both sides are hashed first, so even the lengths do not
    /// influence the timing).
    pub fn secret_matches(&self, presented_secret: &str) -> bool {
        let expected = Sha256::digest(self.secret.as_bytes());
        let presented = Sha256::digest(presented_secret.as_bytes());
        let diff = expected
            .iter()
            .zip(presented.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0 && !self.secret.is_empty()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}.{}.{}", self.secret, self.ca_fingerprint)
    }
}

/// Checks a 64-hex-character token field and returns it in lowercase.
fn parse_hex_field(field: &str, what: &str) -> Result<String, TlsError> {
    if field.len() != HEX_256_LEN {
        return Err(TlsError::BadToken {
            reason: format!(
                "the {what} must be {HEX_256_LEN} hex characters, found {}",
                field.chars().count()
            ),
        });
    }
    if !field.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TlsError::BadToken {
            reason: format!("the {what} contains characters other than 0-9 and a-f"),
        });
    }
    Ok(field.to_ascii_lowercase())
}

impl FromStr for JoinToken {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let parts: Vec<&str> = s.split('.').collect();
        let prefix = parts.first().copied().unwrap_or_default();
        if prefix != TOKEN_PREFIX {
            return Err(TlsError::BadToken {
                reason: format!("it must start with `{TOKEN_PREFIX}.`"),
            });
        }
        if parts.len() != 3 {
            return Err(TlsError::BadToken {
                reason: format!(
                    "expected 3 dot-separated parts (tdm1.<secret>.<ca-fingerprint>), found {}",
                    parts.len()
                ),
            });
        }
        let secret = parse_hex_field(parts[1], "secret")?;
        let ca_fingerprint = parse_hex_field(parts[2], "CA fingerprint")?;
        Ok(Self {
            secret,
            ca_fingerprint,
        })
    }
}

// ---------------------------------------------------------------------------
// rustls configurations
// ---------------------------------------------------------------------------

/// Server side of peer traffic: presents `[node cert, CA cert]`; verifies
/// client certificates against the cluster CA but also admits clients without
/// a certificate (joining nodes). The peer server ([`crate::network::server`])
/// allows a connection whose [`peer_node_id`] is `None` one small Join only, within
/// a deadline, and keeps such connections in a pool of their own.
pub fn server_config(id: &NodeIdentity) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(id.roots()?), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(rustls_err("client certificate verifier"))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rustls_err("protocol versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain()?, id.key_der()?)
        .map_err(rustls_err("node certificate and key"))?;
    Ok(Arc::new(config))
}

/// Client side of peer traffic: presents the node certificate and verifies
/// the server against the cluster CA for [`PEER_SERVER_NAME`] (connect with
/// [`server_name`]).
pub fn client_config(id: &NodeIdentity) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_err("protocol versions"))?
        .with_root_certificates(id.roots()?)
        .with_client_auth_cert(id.chain()?, id.key_der()?)
        .map_err(rustls_err("node certificate and key"))?;
    Ok(Arc::new(config))
}

/// Client config for `tandem join`: no client certificate; the server is
/// accepted only if its chain contains the CA with the token's fingerprint and
/// its certificate verifies against that CA for [`PEER_SERVER_NAME`].
pub fn join_client_config(ca_fingerprint: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let pinned = parse_hex_field(ca_fingerprint, "CA fingerprint")?;
    let provider = provider();
    let verifier = PinnedCaVerifier {
        fingerprint: pinned,
        provider: provider.clone(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rustls_err("protocol versions"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The error a joining node sees when the server's CA is not the pinned one.
#[derive(thiserror::Error)]
#[error(
    "server's cluster CA does not match the join token (token pins {expected}, \
     server sent {presented}); check the address and that the token belongs to that cluster"
)]
struct CaPinMismatch {
    expected: String,
    presented: String,
}

// rustls prints certificate errors with `Debug`; show the readable message.
impl fmt::Debug for CaPinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Verifies a server by a pinned CA fingerprint (see [`join_client_config`]).
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .position(|c| sha256_hex(c) == self.fingerprint);
        let Some(pinned) = pinned else {
            let presented = if intermediates.is_empty() {
                "no CA certificate".to_string()
            } else {
                intermediates
                    .iter()
                    .map(|c| sha256_hex(c))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(CaPinMismatch {
                    expected: self.fingerprint.clone(),
                    presented,
                })),
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(intermediates[pinned].clone().into_owned())?;
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != pinned)
            .map(|(_, c)| c.clone())
            .collect();
        let delegate =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(format!("pinned CA verifier: {e}")))?;
        delegate.verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The node id of a peer from its verified certificate chain (end-entity
/// first), read from its `node-<id>.tandem-peer` name. `None` when the peer
/// presented no certificate (a joining node) or the certificate names no id.
pub fn peer_node_id(certs: &[CertificateDer<'_>]) -> Option<u64> {
    node_id_from_cert_der(certs.first()?).ok().flatten()
}

/// [`PEER_SERVER_NAME`] as a rustls server name, for connecting to peers.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(PEER_SERVER_NAME).expect("PEER_SERVER_NAME is a valid DNS name")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// What the server side of a test handshake saw.
    struct ServerSide {
        result: std::io::Result<Option<u64>>,
        peer_cert_count: usize,
    }

    /// Runs one handshake plus a ping/pong over loopback. Returns the
    /// server's outcome (peer node id on success) and the client's.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
    ) -> (ServerSide, std::io::Result<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            match TlsAcceptor::from(server).accept(tcp).await {
                Ok(mut tls) => {
                    let certs = tls.get_ref().1.peer_certificates().unwrap_or(&[]).to_vec();
                    let mut buf = [0u8; 4];
                    let io = async {
                        tls.read_exact(&mut buf).await?;
                        tls.write_all(b"pong").await?;
                        tls.flush().await
                    }
                    .await;
                    ServerSide {
                        result: io.map(|()| peer_node_id(&certs)),
                        peer_cert_count: certs.len(),
                    }
                }
                Err(e) => ServerSide {
                    result: Err(e),
                    peer_cert_count: 0,
                },
            }
        });
        let client_result = async {
            let tcp = TcpStream::connect(addr).await?;
            let mut tls = TlsConnector::from(client)
                .connect(server_name(), tcp)
                .await?;
            tls.write_all(b"ping").await?;
            tls.flush().await?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"pong");
            Ok(())
        };
        let client_result = tokio::time::timeout(TIMEOUT, client_result)
            .await
            .expect("client timed out");
        let server = tokio::time::timeout(TIMEOUT, server_task)
            .await
            .expect("server timed out")
            .unwrap();
        (server, client_result)
    }

    fn cert_dns_names(cert_pem: &str) -> Vec<String> {
        let der = cert_from_pem(cert_pem).unwrap();
        let cert = parse_x509(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        san.value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn mutual_tls_between_nodes_of_one_cluster() {
        let ca = ClusterCa::generate("test").unwrap();
        let node1 = ca.issue_identity(1).unwrap();
        let node2 = ca.issue_identity(2).unwrap();
        assert_eq!(node1.node_id().unwrap(), 1);
        assert_eq!(node2.node_id().unwrap(), 2);

        let (server, client) = handshake(
            server_config(&node1).unwrap(),
            client_config(&node2).unwrap(),
        )
        .await;
        client.unwrap();
        assert_eq!(server.result.unwrap(), Some(2));

        let (server, client) = handshake(
            server_config(&node2).unwrap(),
            client_config(&node1).unwrap(),
        )
        .await;
        client.unwrap();
        assert_eq!(server.result.unwrap(), Some(1));
    }

    #[tokio::test]
    async fn client_cert_from_another_ca_is_rejected() {
        let ca = ClusterCa::generate("test").unwrap();
        let other_ca = ClusterCa::generate("intruder").unwrap();
        let node1 = ca.issue_identity(1).unwrap();
        let intruder = other_ca.issue_identity(2).unwrap();

        // The intruder trusts our CA (so only the server's check can stop it)
        // but presents a certificate from its own CA.
        let mut roots = RootCertStore::empty();
        roots.add(cert_from_pem(&ca.cert_pem).unwrap()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(intruder.chain().unwrap(), intruder.key_der().unwrap())
            .unwrap();
        let (server, client) = handshake(server_config(&node1).unwrap(), Arc::new(client)).await;
        let err = server.result.expect_err("server must reject the intruder");
        assert!(err.to_string().contains("certificate"), "{err}");
        assert!(client.is_err());

        // With its own client_config, the intruder also refuses our server.
        let (server, client) = handshake(
            server_config(&node1).unwrap(),
            client_config(&intruder).unwrap(),
        )
        .await;
        assert!(client.is_err());
        assert!(server.result.is_err());
    }

    #[tokio::test]
    async fn join_pins_the_cluster_ca() {
        let ca = ClusterCa::generate("test").unwrap();
        let node1 = ca.issue_identity(1).unwrap();
        let token = JoinToken::generate(&ca);
        assert_eq!(token.ca_fingerprint, ca.fingerprint());
        assert_eq!(node1.ca_fingerprint().unwrap(), ca.fingerprint());

        let (server, client) = handshake(
            server_config(&node1).unwrap(),
            join_client_config(&token.ca_fingerprint).unwrap(),
        )
        .await;
        client.unwrap();
        assert_eq!(server.result.unwrap(), None);
        assert_eq!(server.peer_cert_count, 0);

        let other_ca = ClusterCa::generate("other").unwrap();
        let (server, client) = handshake(
            server_config(&node1).unwrap(),
            join_client_config(&other_ca.fingerprint()).unwrap(),
        )
        .await;
        let err = client.expect_err("wrong fingerprint must fail");
        assert!(
            err.to_string()
                .contains("server's cluster CA does not match the join token"),
            "{err}"
        );
        assert!(server.result.is_err());

        // A server of another cluster whose chain holds the pinned CA but whose
        // own certificate was not issued by it is refused as well.
        let impostor = NodeIdentity {
            ca_pem: ca.cert_pem.clone(),
            ..other_ca.issue_identity(1).unwrap()
        };
        let (_, client) = handshake(
            server_config(&impostor).unwrap(),
            join_client_config(&ca.fingerprint()).unwrap(),
        )
        .await;
        assert!(client.is_err());

        assert!(matches!(
            join_client_config("abc"),
            Err(TlsError::BadToken { .. })
        ));
    }

    #[test]
    fn service_names_go_into_the_node_certificate_and_peer_names_do_not() {
        let ca = ClusterCa::generate("test").unwrap();
        let mut names = ServiceNames::default();
        names
            .add_host("198.18.0.2:7000")
            .add_host("0.0.0.0:8080")
            .add_host("[fd00::2]:8080")
            .add_host("PBX-A")
            .add_host("pbx-a.example.com:8443")
            .add_host("Node A")
            .add_host("node-1.tandem-peer")
            .add_host("tandem-peer")
            .add_host("198.18.0.100");
        let id = ca.issue_identity_for(7, &names).unwrap();
        let mut dns = cert_dns_names(&id.cert_pem);
        dns.sort();
        assert_eq!(
            dns,
            vec![
                "localhost",
                "node-7.tandem-peer",
                "pbx-a",
                "pbx-a.example.com",
                "tandem-peer"
            ]
        );
        let der = cert_from_pem(&id.cert_pem).unwrap();
        let cert = parse_x509(&der).unwrap();
        let ips: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string()),
                    16 => {
                        Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string())
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert_eq!(
            ips,
            vec!["127.0.0.1", "::1", "198.18.0.2", "fd00::2", "198.18.0.100"]
        );
        // Still exactly one peer identity.
        assert_eq!(id.node_id().unwrap(), 7);
        // A client that trusts the cluster CA verifies it by an address.
        let mut roots = RootCertStore::empty();
        roots.add(cert_from_pem(&ca.cert_pem).unwrap()).unwrap();
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
        let name = ServerName::try_from("198.18.0.2").unwrap();
        verifier
            .verify_server_cert(&der, &[], &name, &[], UnixTime::now())
            .unwrap();
        let other = ServerName::try_from("198.18.0.3").unwrap();
        assert!(verifier
            .verify_server_cert(&der, &[], &other, &[], UnixTime::now())
            .is_err());
    }

    #[test]
    fn node_certificate_contents() {
        let ca = ClusterCa::generate("test").unwrap();
        // A CSR asking for other names: they are ignored.
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["evil.example".to_string(), node_dns_name(99)]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "administrator");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let cert_pem = ca.sign_csr(7, &csr).unwrap();
        let mut names = cert_dns_names(&cert_pem);
        names.sort();
        // The loopback name every node certificate carries for its HTTPS API.
        assert_eq!(
            names,
            vec!["localhost", "node-7.tandem-peer", "tandem-peer"]
        );
        let der = cert_from_pem(&cert_pem).unwrap();
        let cert = parse_x509(&der).unwrap();
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "tandem node 7"
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);

        let id = NodeIdentity {
            cert_pem,
            key_pem: key.serialize_pem(),
            ca_pem: ca.cert_pem.clone(),
        };
        assert_eq!(id.node_id().unwrap(), 7);
        let now = chrono::Utc::now().timestamp();
        let years = (id.not_after_unix().unwrap() - now) as f64 / (365.25 * 86400.0);
        assert!((4.9..5.1).contains(&years), "{years}");

        assert!(matches!(
            ca.sign_csr(3, "not a csr"),
            Err(TlsError::BadCsr { .. })
        ));
        // A CSR whose signature does not verify (tampered body) is rejected.
        let mut der = rustls_pemfile::csr(&mut csr.as_bytes())
            .unwrap()
            .unwrap()
            .to_vec();
        let mid = der.len() / 3;
        der[mid] ^= 0x01;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der)
        );
        assert!(ca.sign_csr(3, &tampered).is_err());

        assert_eq!(peer_node_id(&[]), None);
        assert_eq!(node_id_from_dns_name("node-12.tandem-peer"), Some(12));
        assert_eq!(node_id_from_dns_name("node-+12.tandem-peer"), None);
        assert_eq!(node_id_from_dns_name("node-.tandem-peer"), None);
        assert_eq!(node_id_from_dns_name("node-12.tandem-peerx"), None);
        assert_eq!(node_id_from_dns_name("node-12xtandem-peer"), None);
    }

    #[test]
    fn join_token_round_trip_and_errors() {
        let ca = ClusterCa::generate("test").unwrap();
        let token = JoinToken::generate(&ca);
        let text = token.to_string();
        assert!(text.starts_with("tdm1."));
        assert_eq!(text.len(), 5 + 64 + 1 + 64);
        assert_eq!(text.parse::<JoinToken>().unwrap(), token);
        assert_eq!(
            format!("  {}\n", text.to_uppercase().replacen("TDM1", "tdm1", 1))
                .parse::<JoinToken>()
                .unwrap(),
            token
        );
        assert_ne!(JoinToken::generate(&ca).secret, token.secret);

        assert!(token.secret_matches(&token.secret));
        assert!(!token.secret_matches(&"0".repeat(64)));
        assert!(!token.secret_matches(""));
        assert!(!token.secret_matches(&token.secret[..63]));

        let secret = "a".repeat(64);
        let fp = "b".repeat(64);
        let bad = [
            ("", "start with"),
            ("tdm2.{s}.{f}", "start with"),
            ("{s}.{f}", "start with"),
            ("tdm1.{s}", "3 dot-separated parts"),
            ("tdm1.{s}.{f}.x", "3 dot-separated parts"),
            ("tdm1.abc.{f}", "secret must be 64"),
            ("tdm1.{s}.{f}0", "CA fingerprint must be 64"),
            ("tdm1.{s}.{g}", "CA fingerprint contains"),
            ("tdm1.{g}.{f}", "secret contains"),
        ];
        for (pattern, expected) in bad {
            let input = pattern
                .replace("{s}", &secret)
                .replace("{f}", &fp)
                .replace("{g}", &"g".repeat(64));
            match input.parse::<JoinToken>() {
                Err(e @ TlsError::BadToken { .. }) => {
                    assert!(e.to_string().contains(expected), "{input:?}: {e}")
                }
                other => panic!("{input:?} gave {other:?}"),
            }
        }
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn save_and_load_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let ca_dir = tmp.path().join("ca");
        let node_dir = tmp.path().join("a/b/node");
        assert!(!ClusterCa::exists(&ca_dir));
        assert!(!NodeIdentity::exists(&node_dir));
        assert!(matches!(ClusterCa::load(&ca_dir), Err(TlsError::Io { .. })));

        let ca = ClusterCa::generate("test").unwrap();
        ca.save(&ca_dir).unwrap();
        assert!(ClusterCa::exists(&ca_dir));
        let loaded = ClusterCa::load(&ca_dir).unwrap();
        assert_eq!(loaded.cert_pem, ca.cert_pem);
        assert_eq!(loaded.key_pem, ca.key_pem);
        assert_eq!(loaded.fingerprint(), ca.fingerprint());
        assert_eq!(ca.fingerprint().len(), 64);

        // The loaded CA can still sign, and what it signs chains to the same CA.
        let id = loaded.issue_identity(3).unwrap();
        id.save(&node_dir).unwrap();
        assert!(NodeIdentity::exists(&node_dir));
        let id2 = NodeIdentity::load(&node_dir).unwrap();
        assert_eq!(id2.cert_pem, id.cert_pem);
        assert_eq!(id2.key_pem, id.key_pem);
        assert_eq!(id2.ca_pem, id.ca_pem);
        assert_eq!(id2.node_id().unwrap(), 3);
        assert_eq!(id2.ca_fingerprint().unwrap(), ca.fingerprint());
        server_config(&id2).unwrap();
        client_config(&id2).unwrap();

        #[cfg(unix)]
        {
            assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
            assert_eq!(mode(&node_dir.join("node.key")), 0o600);
            assert_eq!(mode(&ca_dir), 0o700);
        }

        // A key that does not belong to the certificate is reported with its path.
        let other = ca.issue_identity(4).unwrap();
        fs::write(node_dir.join("node.key"), &other.key_pem).unwrap();
        let err = NodeIdentity::load(&node_dir).unwrap_err();
        assert!(
            matches!(&err, TlsError::Pem { path, .. } if path.ends_with("node.key")),
            "{err}"
        );
        // A node certificate from another CA is reported too.
        let foreign = ClusterCa::generate("x").unwrap().issue_identity(3).unwrap();
        fs::write(node_dir.join("node.pem"), &foreign.cert_pem).unwrap();
        fs::write(node_dir.join("node.key"), &foreign.key_pem).unwrap();
        let err = NodeIdentity::load(&node_dir).unwrap_err();
        assert!(
            err.to_string().contains("not issued by the cluster CA"),
            "{err}"
        );
        fs::write(ca_dir.join("ca.pem"), "garbage").unwrap();
        let err = ClusterCa::load(&ca_dir).unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }
}
