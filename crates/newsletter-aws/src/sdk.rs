//! The AWS SDK configuration both functions load at init: one HTTPS client that trusts the
//! Amazon Trust Services roots only.
//!
//! Every AWS endpoint's certificate chains to these roots. Trusting them alone means init reads
//! no certificate files: the SDK's default loads the system store, which took 2 ms of a 5.6 ms
//! init with Debian's 300 files in `/etc/ssl/certs`. It also means no other CA can vouch for an
//! AWS endpoint. An endpoint that is not AWS's (a local HTTPS server, a TLS-inspecting proxy)
//! is trusted through `AWS_CA_BUNDLE`, the variable the AWS CLI and other SDKs read for this.

use aws_config::environment::{
    EnvironmentVariableCredentialsProvider, EnvironmentVariableRegionProvider,
};
use aws_config::{BehaviorVersion, SdkConfig, timeout::TimeoutConfig};
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
use newsletter::config::{self, ConfigError};
use rustls_pki_types::{CertificateDer, pem::PemObject};

const AMAZON_ROOTS: &str = include_str!("amazon-roots.pem");
const CA_BUNDLE: &str = "AWS_CA_BUNDLE";

/// Loads region and credentials as the SDK does by default (no network call: credentials
/// resolve on first use), with `timeouts` and the HTTPS client described above.
pub async fn load(timeouts: TimeoutConfig) -> Result<SdkConfig, ConfigError> {
    let extra_ca = match config::optional(CA_BUNDLE) {
        Some(path) => Some(read_ca_bundle(&path)?),
        None => None,
    };
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(tls_context(extra_ca)?)
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client)
        .timeout_config(timeouts);
    // Lambda puts the region and the role's credentials in the environment, where the default
    // chains would look first anyway. Building the rest of those chains (an STS client for web
    // identity, IMDS, SSO, profiles) was a quarter of init's instructions (callgrind); without
    // the variables (a developer's profile, say) the default chains are used.
    if std::env::var_os("AWS_REGION").is_some() {
        loader = loader.region(EnvironmentVariableRegionProvider::new());
    }
    if ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
        .iter()
        .all(|name| std::env::var_os(name).is_some())
    {
        loader = loader.credentials_provider(EnvironmentVariableCredentialsProvider::new());
    }
    Ok(loader.load().await)
}

fn tls_context(extra_ca: Option<Vec<u8>>) -> Result<TlsContext, ConfigError> {
    let mut trust = TrustStore::empty().with_pem_certificate(AMAZON_ROOTS.as_bytes());
    if let Some(pem) = extra_ca {
        trust = trust.with_pem_certificate(pem);
    }
    TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|err| invalid(err.to_string()))
}

/// Reads a PEM bundle and checks it holds certificates, so that a bad one fails here with the
/// variable's name (the SDK would panic on it when it builds its first connection).
fn read_ca_bundle(path: &str) -> Result<Vec<u8>, ConfigError> {
    let pem = std::fs::read(path).map_err(|err| invalid(format!("{path}: {err}")))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| invalid(format!("{path}: {err}")))?;
    if certificates.is_empty() {
        return Err(invalid(format!("{path}: no PEM certificate in it")));
    }
    Ok(pem)
}

fn invalid(reason: String) -> ConfigError {
    ConfigError::Invalid {
        name: CA_BUNDLE,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_roots_are_the_five_amazon_trust_services_certificates() {
        let roots = CertificateDer::pem_slice_iter(AMAZON_ROOTS.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert_eq!(roots.len(), 5);
    }

    #[test]
    fn a_ca_bundle_must_exist_and_hold_certificates() {
        let dir = std::env::temp_dir().join(format!("ca-bundle-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let good = dir.join("good.pem");
        std::fs::write(&good, AMAZON_ROOTS).unwrap();

        for bad in [&missing, &empty] {
            let err = read_ca_bundle(bad.to_str().unwrap()).unwrap_err();
            assert!(err.to_string().contains("AWS_CA_BUNDLE"), "{err}");
        }
        assert!(read_ca_bundle(good.to_str().unwrap()).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
