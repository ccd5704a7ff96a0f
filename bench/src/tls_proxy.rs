//! HTTPS in front of the local AWS server. On Lambda every SDK call is HTTPS, so a function's
//! first request pays for loading the root certificates, seeding the TLS RNG and the handshake;
//! pointing a function here makes it pay the same.

use anyhow::Context;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct TlsProxy {
    address: SocketAddr,
    ca_bundle: PathBuf,
    server: JoinHandle<()>,
}

impl TlsProxy {
    /// Terminates TLS on 127.0.0.1 with a fresh self-signed certificate and forwards the bytes to
    /// `upstream`. Writes that certificate to `ca_bundle`: a function given it as `AWS_CA_BUNDLE`
    /// trusts the proxy as it trusts AWS endpoints on Lambda (through its embedded Amazon roots),
    /// with one certificate more to parse.
    pub async fn start(upstream: SocketAddr, ca_bundle: &Path) -> anyhow::Result<Self> {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
        std::fs::write(ca_bundle, certified.cert.pem())
            .with_context(|| format!("writing {}", ca_bundle.display()))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                // Small TLS records must not wait for delayed ACKs (Nagle): that would add
                // tens of milliseconds no real endpoint adds.
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let (Ok(mut tls), Ok(mut plain)) = (
                        acceptor.accept(stream).await,
                        TcpStream::connect(upstream).await,
                    ) else {
                        return;
                    };
                    let _ = plain.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Ok(Self {
            address,
            ca_bundle: ca_bundle.to_owned(),
            server,
        })
    }

    pub fn endpoint(&self) -> String {
        format!("https://{}", self.address)
    }

    pub fn ca_bundle(&self) -> &Path {
        &self.ca_bundle
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}
