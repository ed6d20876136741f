//! How a generated device connects: one TLS client configuration per identity, built once, and the
//! CONNECT that every mode starts with.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use iothub_client::mqtt::{Connected, MqttClient};

use crate::identities::Identity;
use crate::target::Target;

/// TLS client configurations, one per identity, built once: building one parses PEM and keys,
/// which would otherwise load the generator, not the broker.
pub(crate) struct ClientConfigs {
    ca: Vec<u8>,
    resume: bool,
    tls12: bool,
    built: HashMap<usize, Arc<rustls::ClientConfig>>,
}

impl ClientConfigs {
    pub(crate) fn new(ca: Vec<u8>, resume: bool, tls12: bool) -> ClientConfigs {
        ClientConfigs {
            ca,
            resume,
            tls12,
            built: Default::default(),
        }
    }

    /// Forgets the configurations built so far (a connection keeps its own).
    pub(crate) fn forget(&mut self) {
        self.built.clear();
    }

    /// The configuration of identity `index`, built on first use.
    pub(crate) fn get(&mut self, index: usize, id: &Identity) -> Result<Arc<rustls::ClientConfig>> {
        if let Some(c) = self.built.get(&index) {
            return Ok(c.clone());
        }
        // Key exchange as the OpenSSL 3.0 based devices and SDKs do it (X25519, then P-256; no
        // post-quantum hybrid), the same offer to every broker.
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.kx_groups = vec![
            rustls::crypto::aws_lc_rs::kx_group::X25519,
            rustls::crypto::aws_lc_rs::kx_group::SECP256R1,
        ];
        let versions: &[&'static rustls::SupportedProtocolVersion] = if self.tls12 {
            &[&rustls::version::TLS12]
        } else {
            rustls::DEFAULT_VERSIONS
        };
        let mut config =
            MqttClient::tls_config_with(&self.ca, &id.chain, &id.key, provider, versions)?;
        if !self.resume {
            // A full handshake every time, as a device that never saw this broker.
            Arc::get_mut(&mut config)
                .context("a fresh TLS configuration is shared")?
                .resumption = rustls::client::Resumption::disabled();
        }
        self.built.insert(index, config.clone());
        Ok(config)
    }
}

/// Connects identity `index` to the broker; a refusal (CONNACK code) is an error.
pub(crate) async fn connect_once(
    t: &Target,
    configs: &mut ClientConfigs,
    index: usize,
    id: &Identity,
) -> Result<MqttClient> {
    let config = configs.get(index, id)?;
    match MqttClient::connect_with(t.addr, &t.server_name, config, &id.id).await? {
        Connected::Accepted(c) => Ok(*c),
        Connected::Refused(code) => bail!("CONNACK {code}"),
    }
}
