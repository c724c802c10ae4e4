//! TLS for the tests: a private certificate authority made with the `openssl` command, server
//! certificates it signs for `127.0.0.1` and `localhost`, and a rustls client that trusts it.

use crate::gateway::TempDir;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// A certificate authority in a temporary directory.
#[derive(Debug)]
pub struct TestCa {
    dir: TempDir,
    issued: std::sync::atomic::AtomicU32,
}

/// A server certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// The chain: the server's certificate, then the authority's.
    pub chain: PathBuf,
    /// The private key.
    pub key: PathBuf,
    /// The server certificate alone (DER), to compare with what a server presents.
    pub der: Vec<u8>,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (install it: apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    /// A new authority (P-256 key, valid two days).
    pub fn new() -> TestCa {
        let dir = TempDir::new("ca");
        let (key, cert) = (dir.join("ca.key"), dir.join("ca.pem"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=e2e test authority",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]);
        TestCa {
            dir,
            issued: Default::default(),
        }
    }

    /// The authority's certificate (PEM file).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate for `127.0.0.1` and `localhost` named `cn`, signed by this
    /// authority; each call makes a new key.
    pub fn issue(&self, cn: &str) -> ServerCert {
        let n = self
            .issued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = |ext: &str| self.dir.join(&format!("server-{n}.{ext}"));
        let (key, csr, cert, chain, ext) = (
            path("key"),
            path("csr"),
            path("pem"),
            path("chain.pem"),
            path("ext"),
        );
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            csr.to_str().unwrap(),
        ]);
        let ca_cert = self.cert_path();
        let ca_key = self.dir.join("ca.key");
        openssl(&[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            ca_cert.to_str().unwrap(),
            "-CAkey",
            ca_key.to_str().unwrap(),
            "-set_serial",
            &(1000 + n).to_string(),
            "-days",
            "2",
            "-extfile",
            ext.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]);
        let mut pem = std::fs::read(&cert).unwrap();
        pem.extend(std::fs::read(&ca_cert).unwrap());
        std::fs::write(&chain, pem).unwrap();
        let der = CertificateDer::from_pem_file(&cert)
            .expect("the certificate openssl wrote")
            .to_vec();
        ServerCert { chain, key, der }
    }

    /// A rustls client configuration that trusts this authority only (HTTP/1.1 by ALPN).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(self.cert_path()).expect("the authority"))
            .expect("a usable authority certificate");
        // ring as in the gateway (see its tls.rs); deprecated for lacking post-quantum groups.
        #[allow(deprecated)]
        let provider = Arc::new(ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("rustls's default versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// Opens TLS to `addr` as `127.0.0.1`, verified against `config`'s roots; returns the stream
/// and the certificate the server presented (DER), or the handshake's error.
pub async fn tls_connect(
    addr: &str,
    config: &Arc<ClientConfig>,
) -> std::io::Result<(TlsStream<TcpStream>, Vec<u8>)> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").expect("an IP address name");
    let stream = TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await?;
    let presented = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    Ok((stream, presented))
}
