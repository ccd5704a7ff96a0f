//! HTTPS in front of the local AWS servers. On Lambda every SDK call is HTTPS, so a function's
//! first request pays for loading the root certificates, seeding the TLS RNG and the handshake;
//! pointing a function here makes it pay the same.

use anyhow::Context;
use local_stack::Endpoints;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct TlsProxy {
    endpoints: Endpoints,
    ca_bundle: PathBuf,
    servers: Vec<JoinHandle<()>>,
}

impl TlsProxy {
    /// Terminates TLS on 127.0.0.1 in front of each of `upstreams` (moto and DynamoDB Local), with
    /// one fresh self-signed certificate, and forwards the bytes. Writes that certificate to
    /// `ca_bundle`: a function given it as `AWS_CA_BUNDLE` trusts the proxy as it trusts AWS
    /// endpoints on Lambda (through its embedded Amazon roots), with one certificate more to parse.
    pub async fn start(upstreams: &Endpoints, ca_bundle: &Path) -> anyhow::Result<Self> {
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
        let (aws, aws_server) = forward(acceptor.clone(), &upstreams.aws).await?;
        let (dynamodb, dynamodb_server) = forward(acceptor, &upstreams.dynamodb).await?;
        Ok(Self {
            endpoints: Endpoints { aws, dynamodb },
            ca_bundle: ca_bundle.to_owned(),
            servers: vec![aws_server, dynamodb_server],
        })
    }

    /// The HTTPS endpoints, in place of the upstreams' plain ones.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    pub fn ca_bundle(&self) -> &Path {
        &self.ca_bundle
    }
}

/// Listens on a port the OS picks and forwards each connection, TLS terminated, to `upstream`
/// (a local `http://` endpoint). Returns the `https://` endpoint.
async fn forward(
    acceptor: TlsAcceptor,
    upstream: &str,
) -> anyhow::Result<(String, JoinHandle<()>)> {
    let upstream: SocketAddr = upstream
        .strip_prefix("http://")
        .and_then(|address| address.parse().ok())
        .with_context(|| format!("{upstream} is not http://<ip>:<port>"))?;
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
    Ok((format!("https://{address}"), server))
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
    }
}
