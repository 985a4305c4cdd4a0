//! A throw-away certificate authority for TLS and mutual-TLS tests.
//!
//! Owns: [`Ca`] (a self-signed CA made with rcgen, its PEM files in a
//! private `TempDir`) and [`CertPair`] (a certificate and key issued by it,
//! as PEM files). Keys are ECDSA P-256; certificates are valid from 1975 to
//! 4096, so the machine clock never matters.
//!
//! Everything here is safe to use from parallel test threads: a `Ca` only
//! needs `&self` to issue, and every issued pair gets its own file names.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tempfile::TempDir;

/// A certificate and its private key, as PEM files on disk.
///
/// The files belong to the [`Ca`] that issued them and are deleted when that
/// `Ca` is dropped, so keep the `Ca` alive while anything still reads them.
/// ([`crate::registry::Registry`] copies them at start, so a running
/// registry does not depend on them any more.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPair {
    /// PEM certificate (leaf only, signed directly by the CA).
    pub cert_path: PathBuf,
    /// PEM private key, PKCS#8 (`-----BEGIN PRIVATE KEY-----`).
    pub key_path: PathBuf,
}

impl CertPair {
    /// The certificate file's contents.
    pub fn cert_pem(&self) -> String {
        fs::read_to_string(&self.cert_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.cert_path.display()))
    }

    /// The key file's contents.
    pub fn key_pem(&self) -> String {
        fs::read_to_string(&self.key_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.key_path.display()))
    }

    /// Certificate followed by key in one PEM string, the form
    /// `reqwest::Identity::from_pem` takes for a client certificate.
    pub fn identity_pem(&self) -> Vec<u8> {
        let mut pem = self.cert_pem().into_bytes();
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        pem.extend_from_slice(self.key_pem().as_bytes());
        pem
    }
}

/// A self-made certificate authority. Each `Ca::new()` is a new, unrelated
/// CA with its own key, so a client trusting one CA rejects servers of
/// another.
pub struct Ca {
    dir: TempDir,
    cert: Certificate,
    key: KeyPair,
    cert_path: PathBuf,
    issued: AtomicUsize,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_path", &self.cert_path)
            .finish()
    }
}

impl Default for Ca {
    fn default() -> Self {
        Self::new()
    }
}

impl Ca {
    /// Make a new CA (CN `testkit CA`, basic constraints CA, key usages
    /// certSign/cRLSign/digitalSignature) and write its certificate to
    /// `ca.pem` in a fresh temporary directory. Panics on failure.
    pub fn new() -> Ca {
        let dir = tempfile::Builder::new()
            .prefix("testkit-ca-")
            .tempdir()
            .expect("create CA temp dir");
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "testkit CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "syncer testkit");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign CA");
        let cert_path = dir.path().join("ca.pem");
        fs::write(&cert_path, cert.pem()).expect("write CA certificate");
        Ca {
            dir,
            cert,
            key,
            cert_path,
            issued: AtomicUsize::new(0),
        }
    }

    /// Path of the CA certificate (PEM). Give it to clients as their trust
    /// root, or to a registry as `client_ca`.
    pub fn cert_path(&self) -> PathBuf {
        self.cert_path.clone()
    }

    /// The CA certificate as a PEM string.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// Directory holding the CA's files (and every pair it issued).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issue a server certificate for SAN IP `127.0.0.1` and DNS `localhost`
    /// (CN `localhost`, extended key usage serverAuth). New key and new files
    /// on every call.
    pub fn issue_server(&self) -> CertPair {
        self.issue(
            "localhost",
            vec![
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                SanType::DnsName("localhost".try_into().expect("dns name")),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
            "server",
        )
    }

    /// Issue a client certificate for mutual TLS with the given common name
    /// (extended key usage clientAuth, no SANs). New key and new files on
    /// every call.
    pub fn issue_client(&self, common_name: &str) -> CertPair {
        self.issue(
            common_name,
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            "client",
        )
    }

    fn issue(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        eku: ExtendedKeyUsagePurpose,
        kind: &str,
    ) -> CertPair {
        let n = self.issued.fetch_add(1, Ordering::SeqCst);
        let key = KeyPair::generate().expect("generate leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![eku];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf certificate");
        let cert_path = self.dir.path().join(format!("{kind}-{n}.pem"));
        let key_path = self.dir.path().join(format!("{kind}-{n}-key.pem"));
        fs::write(&cert_path, cert.pem()).expect("write leaf certificate");
        fs::write(&key_path, key.serialize_pem()).expect("write leaf key");
        CertPair {
            cert_path,
            key_path,
        }
    }
}
