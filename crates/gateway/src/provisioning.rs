//! One provisioning connection: the Azure device SDK's `ProvisioningDeviceClient` on the device
//! port, told apart from a device by its CONNECT username (`iothub_mqtt::provisioning`).
//!
//! Why its own module: the exchange is short and different from a device session (subscribe to
//! the answers, publish register and status requests, read the answers) and must stay bounded
//! because the client is not a device yet: at most `provisioning_requests` requests and
//! `provisioning_timeout` in all, only its own answer filter, QoS 0 or 1, and a refused
//! registration ends the connection. Every decision is the hub's (`Hub::admit_provisioning`,
//! `Hub::register_provisioning_client`, `Hub::provisioning_operation_status`); this module
//! carries bytes.

use std::net::SocketAddr;

use iothub_hub::provisioning::{ProvisioningAnswer, ProvisioningClient, ProvisioningHello};
use iothub_hub::{ConnectRequest, Hub};
use iothub_mqtt::codec::{self, ConnAck, Connect, Packet, Publish, SubAck};
use iothub_mqtt::provisioning::{
    self as dps, parse_register_body, parse_request_topic, ProvisioningRequest,
};
use tokio::sync::watch;

use crate::conn::{connack, Conn, ReadError};
use crate::limits::GatewayLimits;

/// Serves a provisioning client from its CONNECT to its end.
pub(crate) async fn run(
    mut conn: Conn,
    peer: SocketAddr,
    hub: Hub,
    limits: &GatewayLimits,
    connect: Connect,
    chain: Vec<Vec<u8>>,
    mut stop: watch::Receiver<bool>,
) {
    let username = connect.username.clone().unwrap_or_default();
    let hello = dps::parse_username(&username)
        .map(|u| ProvisioningHello {
            id_scope: u.id_scope.to_string(),
            registration_id: u.registration_id.to_string(),
        })
        .map_err(|_| username.clone());
    let request = ConnectRequest {
        client_id: connect.client_id.clone(),
        username: connect.username.clone(),
        password: None,
        chain,
        remote: peer.to_string(),
    };
    let judging = hub.clone();
    let admitted =
        tokio::task::spawn_blocking(move || judging.admit_provisioning(hello, request, peer)).await;
    let Ok(Ok(client)) = admitted else {
        let _ = conn
            .write_packet(&connack(codec::CONNACK_NOT_AUTHORIZED))
            .await;
        let _ = conn.stream.close().await;
        return;
    };
    let accepted = Packet::ConnAck(ConnAck {
        session_present: false,
        code: codec::CONNACK_ACCEPTED,
    });
    if conn.write_packet(&accepted).await.is_err() {
        return;
    }
    let exchange = Exchange {
        conn: &mut conn,
        hub: &hub,
        client: &client,
        limits,
        requests: 0,
    };
    let ended = tokio::select! {
        end = exchange.serve() => end,
        _ = tokio::time::sleep(limits.provisioning_timeout) => Err(format!(
            "provisioning connection closed after {} s (--provisioning-timeout)",
            limits.provisioning_timeout.as_secs()
        )),
        _ = stop.changed() => Ok(()),
    };
    if let Err(reason) = ended {
        hub.refuse_connection(&client.registration_id, peer, &reason);
    }
    let _ = conn.stream.close().await;
}

struct Exchange<'a> {
    conn: &'a mut Conn,
    hub: &'a Hub,
    client: &'a ProvisioningClient,
    limits: &'a GatewayLimits,
    requests: u32,
}

impl Exchange<'_> {
    /// Reads and answers packets until the client leaves (Ok) or is closed for cause (Err).
    async fn serve(mut self) -> Result<(), String> {
        loop {
            let packet = match self.conn.read_packet().await {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(()),
                Err(ReadError::Io(_)) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            };
            match packet {
                Packet::Subscribe(s) => {
                    // Only the answer filter; anything else is refused in its SUBACK.
                    let return_codes = s
                        .filters
                        .iter()
                        .map(|(f, qos)| {
                            if f == dps::RESPONSE_FILTER {
                                (*qos).min(1)
                            } else {
                                codec::SUBACK_FAILURE
                            }
                        })
                        .collect();
                    let ack = Packet::SubAck(SubAck {
                        pkid: s.pkid,
                        return_codes,
                    });
                    self.conn.write_packet(&ack).await?;
                }
                Packet::Unsubscribe(u) => self.conn.write_packet(&Packet::UnsubAck(u.pkid)).await?,
                Packet::Publish(p) => {
                    if self.on_request(p).await? {
                        return Ok(());
                    }
                }
                Packet::PingReq => self.conn.write_packet(&Packet::PingResp).await?,
                Packet::Disconnect => return Ok(()),
                other => {
                    return Err(format!(
                        "a provisioning client sent {}, which it never needs",
                        other.name()
                    ))
                }
            }
        }
    }

    /// Answers one request; true when the connection ends after it.
    async fn on_request(&mut self, p: Publish) -> Result<bool, String> {
        if p.qos > 1 {
            return Err("a provisioning request at QoS 2, which is not served".into());
        }
        self.requests += 1;
        if self.requests > self.limits.provisioning_requests {
            return Err(format!(
                "more than {} requests on one provisioning connection (--provisioning-requests)",
                self.limits.provisioning_requests
            ));
        }
        if p.qos == 1 {
            self.conn.write_packet(&Packet::PubAck(p.pkid)).await?;
        }
        let request = match parse_request_topic(&p.topic) {
            Ok(r) => r,
            Err(e) => {
                // Without a usable request id there is no topic to answer on.
                return Err(e.to_string());
            }
        };
        let rid = request.rid().to_string();
        let (hub, client) = (self.hub.clone(), self.client.clone());
        let answer = match request {
            ProvisioningRequest::Register { .. } => {
                let body = p.payload.clone();
                blocking(move || match parse_register_body(&body) {
                    Ok(b) => hub.register_provisioning_client(&client, &b.registration_id),
                    Err(e) => hub.provisioning_request_invalid(&client, &e.to_string()),
                })
                .await?
            }
            ProvisioningRequest::OperationStatus { operation_id, .. } => {
                let operation_id = operation_id.to_string();
                blocking(move || hub.provisioning_operation_status(&client, &operation_id)).await?
            }
        };
        let topic = dps::response_topic(answer.status, &rid, answer.retry_after);
        let ends = answer.ends;
        self.conn
            .write_packet(&Packet::Publish(Publish {
                dup: false,
                qos: 0,
                retain: false,
                topic,
                pkid: 0,
                payload: answer.body.into(),
            }))
            .await?;
        Ok(ends)
    }
}

async fn blocking<F>(f: F) -> Result<ProvisioningAnswer, String>
where
    F: FnOnce() -> ProvisioningAnswer + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("the provisioning task failed: {e}"))
}
