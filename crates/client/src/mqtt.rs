//! A minimal MQTT 3.1.1 device client over TLS with a client certificate, for `iothub demo` and
//! the load generator (`iothub-bench`): just what a device does against the hub (CONNECT, PUBLISH
//! at QoS 1, SUBSCRIBE, receive and acknowledge a PUBLISH). It uses the hub's own codec, so the
//! demo exercises both directions.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use iothub_mqtt::codec::{self, Connect, Packet, Publish, Subscribe};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub struct MqttClient {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
    next_pkid: u16,
    /// Messages that arrived while waiting for another packet.
    pending: std::collections::VecDeque<Publish>,
}

/// What the hub answered to CONNECT.
pub enum Connected {
    Accepted(Box<MqttClient>),
    Refused(u8),
}

impl MqttClient {
    /// Connects to `addr` (verifying the hub as `server_name` against `ca_pem`), presenting the
    /// certificate chain and key, with the Azure username for `client_id`.
    pub async fn connect(
        addr: std::net::SocketAddr,
        server_name: &str,
        ca_pem: &[u8],
        chain_pem: &[u8],
        key_pem: &[u8],
        client_id: &str,
    ) -> Result<Connected> {
        let config = Self::tls_config(ca_pem, chain_pem, key_pem)?;
        Self::connect_with(addr, server_name, config, client_id).await
    }

    /// The TLS client configuration for one device identity. Reusing it across connects lets
    /// rustls resume the TLS session (it keeps the tickets the server sent).
    pub fn tls_config(
        ca_pem: &[u8],
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Arc<rustls::ClientConfig>> {
        Self::tls_config_with(
            ca_pem,
            chain_pem,
            key_pem,
            rustls::crypto::aws_lc_rs::default_provider(),
            rustls::DEFAULT_VERSIONS,
        )
    }

    /// `tls_config` with a chosen crypto provider (e.g. other key-exchange groups) and TLS
    /// versions.
    pub fn tls_config_with(
        ca_pem: &[u8],
        chain_pem: &[u8],
        key_pem: &[u8],
        provider: rustls::crypto::CryptoProvider,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(c?)?;
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem).collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        Ok(Arc::new(config))
    }

    /// Connects with a prepared TLS configuration (see `tls_config`).
    pub async fn connect_with(
        addr: std::net::SocketAddr,
        server_name: &str,
        config: Arc<rustls::ClientConfig>,
        client_id: &str,
    ) -> Result<Connected> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot reach {addr}"))?;
        // Small request/response packets: without this, Nagle's algorithm holds CONNECT back
        // until the server's (delayed) ACK, about 40 ms per connect.
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(server_name.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        let mut client = MqttClient {
            stream,
            buf: BytesMut::new(),
            next_pkid: 1,
            pending: Default::default(),
        };
        client
            .send(&Packet::Connect(Connect {
                protocol_level: 4,
                client_id: client_id.to_string(),
                clean_session: false,
                keep_alive: 60,
                username: Some(format!("{server_name}/{client_id}/?api-version=2021-04-12")),
                password: None,
                will: None,
            }))
            .await?;
        match client.recv(Duration::from_secs(10)).await {
            Ok(Packet::ConnAck(a)) if a.code == codec::CONNACK_ACCEPTED => {
                Ok(Connected::Accepted(Box::new(client)))
            }
            Ok(Packet::ConnAck(a)) => Ok(Connected::Refused(a.code)),
            Ok(other) => bail!("expected CONNACK, got {other:?}"),
            // TLS 1.3: a refusal may surface only as a closed connection on the first read.
            Err(e) => Err(e),
        }
    }

    /// Whether the TLS handshake of this connection resumed an earlier session.
    pub fn resumed(&self) -> bool {
        self.stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// Sends one packet as is: for callers that drive the protocol themselves (the load
    /// generator keeps several QoS 1 messages in flight).
    pub async fn send(&mut self, packet: &Packet) -> Result<()> {
        let mut out = BytesMut::new();
        codec::encode(packet, &mut out).map_err(|e| anyhow!("{e}"))?;
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Reads the next packet from the hub, waiting at most `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Packet> {
        tokio::time::timeout(timeout, async {
            loop {
                if let Some(p) =
                    codec::decode(&mut self.buf, 1 << 20).map_err(|e| anyhow!("{e}"))?
                {
                    return Ok(p);
                }
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    bail!("the hub closed the connection");
                }
            }
        })
        .await
        .map_err(|_| anyhow!("no answer from the hub within {timeout:?}"))?
    }

    /// The next packet identifier (1 to 65535, then 1 again).
    pub fn pkid(&mut self) -> u16 {
        let id = self.next_pkid;
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        id
    }

    /// Publishes at QoS 1 and waits for the PUBACK.
    pub async fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<()> {
        let pkid = self.pkid();
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos: 1,
            retain: false,
            topic: topic.into(),
            pkid,
            payload: payload.to_vec().into(),
        }))
        .await?;
        match self.recv(Duration::from_secs(10)).await? {
            Packet::PubAck(id) if id == pkid => Ok(()),
            other => bail!("expected PUBACK {pkid}, got {other:?}"),
        }
    }

    /// Subscribes at QoS 1 and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str) -> Result<()> {
        let pkid = self.pkid();
        self.send(&Packet::Subscribe(Subscribe {
            pkid,
            filters: vec![(filter.into(), 1)],
        }))
        .await?;
        loop {
            match self.recv(Duration::from_secs(10)).await? {
                Packet::SubAck(a) if a.pkid == pkid => return Ok(()),
                // A queued message may arrive before the SUBACK: keep it for next_message.
                Packet::Publish(p) => {
                    if p.qos == 1 {
                        self.send(&Packet::PubAck(p.pkid)).await?;
                    }
                    self.pending.push_back(p);
                }
                other => bail!("expected SUBACK, got {other:?}"),
            }
        }
    }

    /// Waits for the next PUBLISH from the hub and acknowledges it.
    pub async fn next_message(&mut self, timeout: Duration) -> Result<Publish> {
        if let Some(p) = self.pending.pop_front() {
            return Ok(p);
        }
        loop {
            match self.recv(timeout).await? {
                Packet::Publish(p) => {
                    if p.qos == 1 {
                        self.send(&Packet::PubAck(p.pkid)).await?;
                    }
                    return Ok(p);
                }
                Packet::SubAck(_) | Packet::PingResp => continue,
                other => bail!("expected PUBLISH, got {other:?}"),
            }
        }
    }

    /// Sends PINGREQ and waits for the PINGRESP: proves the connection is still open.
    pub async fn ping(&mut self) -> Result<()> {
        self.send(&Packet::PingReq).await?;
        loop {
            match self.recv(Duration::from_secs(10)).await? {
                Packet::PingResp => return Ok(()),
                Packet::Publish(p) => {
                    if p.qos == 1 {
                        self.send(&Packet::PubAck(p.pkid)).await?;
                    }
                    self.pending.push_back(p);
                }
                other => bail!("expected PINGRESP, got {other:?}"),
            }
        }
    }

    pub async fn disconnect(mut self) -> Result<()> {
        self.send(&Packet::Disconnect).await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }
}
