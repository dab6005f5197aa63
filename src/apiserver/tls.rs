//! Optional TLS: a self-signed CA and a server certificate it signs (SANs: `localhost`, `127.0.0.1`,
//! `::1` and the bind address), generated with rcgen on first start and kept beside the kubeconfig
//! (`DATA_DIR/api/ca.crt`, `tls.crt`, `tls.key`). Clients trust the CA through the kubeconfig's
//! `certificate-authority-data`. A separate CA (rather than one self-signed leaf) is what both Go's and
//! rustls' verifiers accept without special cases.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::auth::write_private;

/// Failures preparing TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot generate the TLS certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a usable PEM file: {message}")]
    Pem { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The certificate material in PEM.
pub struct Certificates {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Loads the certificates in `dir`, generating a new CA and server certificate when they are missing
/// or were made for another bind address (the kubeconfig, rewritten on every start, carries the CA).
pub fn load_or_create(dir: &Path, bind_ip: IpAddr) -> Result<Certificates, TlsError> {
    let (ca_path, cert_path, key_path) =
        (dir.join("ca.crt"), dir.join("tls.crt"), dir.join("tls.key"));
    let marker = dir.join("tls.names");
    let names = format!("{bind_ip}");
    if ca_path.exists() && cert_path.exists() && key_path.exists() {
        let same = std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == names);
        if same {
            return Ok(Certificates {
                ca_pem: std::fs::read_to_string(&ca_path).map_err(io(&ca_path))?,
                cert_pem: std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?,
                key_pem: std::fs::read_to_string(&key_path).map_err(io(&key_path))?,
            });
        }
    }
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "flowmason embedded API CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let mut sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !bind_ip.is_unspecified() && !sans.contains(&bind_ip.to_string()) {
        sans.push(bind_ip.to_string());
    }
    let mut params = CertificateParams::new(sans)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "flowmason embedded API server");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let out = Certificates {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    std::fs::write(&ca_path, &out.ca_pem).map_err(io(&ca_path))?;
    std::fs::write(&cert_path, &out.cert_pem).map_err(io(&cert_path))?;
    write_private(&key_path, out.key_pem.as_bytes()).map_err(io(&key_path))?;
    std::fs::write(&marker, &names).map_err(io(&marker))?;
    Ok(out)
}

/// A rustls server configuration (ring provider, HTTP/2 and HTTP/1.1 by ALPN).
pub fn server_config(certs: &Certificates) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(certs.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Pem {
                path: "tls.crt".into(),
                message: e.to_string(),
            })?;
    let key =
        PrivateKeyDer::from_pem_slice(certs.key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            path: "tls.key".into(),
            message: e.to_string(),
        })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
