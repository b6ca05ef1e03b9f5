//! The gRPC side of `apogee bench produce --grpc` and `apogee bench consume
//! --grpc`: a thin client over the `apache.rocketmq.v2.MessagingService`
//! stubs that `apogee-proxy` generates, doing what an official RocketMQ 5
//! client does per message (SendMessage; SimpleConsumer-style
//! ReceiveMessage + AckMessage with one AckMessage per received batch), so
//! the figures compare with the remoting ones on the same broker.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use apogee_proxy::convert;
use apogee_proxy::pb::{self, messaging_service_client::MessagingServiceClient, Code};
use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};

/// Why a gRPC call of the benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("bad gRPC endpoint {addr:?}: {source}")]
    Endpoint {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect to the gRPC endpoint {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::Status),
    #[error("{call}: {code} {message}")]
    Refused {
        call: &'static str,
        code: String,
        message: String,
    },
}

type Result<T> = std::result::Result<T, GrpcError>;

/// One client identity over `connections` HTTP/2 connections to the
/// endpoint, used round-robin (an official client uses one per endpoint).
pub struct GrpcClient {
    channels: Vec<MessagingServiceClient<Channel>>,
    next: AtomicUsize,
    client_id: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

/// What one ReceiveMessage returned.
pub struct Received {
    pub messages: Vec<pb::Message>,
}

fn refused(call: &'static str, s: Option<pb::Status>) -> GrpcError {
    let s = s.unwrap_or_default();
    GrpcError::Refused {
        call,
        code: Code::try_from(s.code)
            .map(|c| c.as_str_name().to_owned())
            .unwrap_or_else(|_| s.code.to_string()),
        message: s.message,
    }
}

fn is_ok(s: &Option<pb::Status>) -> bool {
    s.as_ref().is_some_and(|s| s.code == Code::Ok as i32)
}

fn resource(name: &str) -> Option<pb::Resource> {
    Some(pb::Resource {
        name: name.to_owned(),
        ..Default::default()
    })
}

impl GrpcClient {
    /// Connects to `addr` (`host:port`, plaintext HTTP/2).
    pub async fn connect(addr: &str, connections: usize) -> Result<GrpcClient> {
        let uri = format!("http://{addr}");
        let endpoint = Endpoint::from_shared(uri).map_err(|source| GrpcError::Endpoint {
            addr: addr.to_owned(),
            source,
        })?;
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let mut channels = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            let ch = endpoint
                .connect()
                .await
                .map_err(|source| GrpcError::Connect {
                    addr: addr.to_owned(),
                    source,
                })?;
            channels.push(
                MessagingServiceClient::new(ch)
                    .max_decoding_message_size(64 * 1024 * 1024)
                    .max_encoding_message_size(64 * 1024 * 1024),
            );
        }
        let id = format!(
            "apogee-bench@{}@{}",
            std::process::id(),
            super::produce::now_millis()
        );
        let client_id = id
            .parse()
            .unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static("apogee-bench"));
        Ok(GrpcClient {
            channels,
            next: AtomicUsize::new(0),
            client_id,
        })
    }

    fn channel(&self) -> MessagingServiceClient<Channel> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[i].clone()
    }

    fn request<T>(&self, msg: T, timeout: Option<Duration>) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert("x-mq-client-id", self.client_id.clone());
        if let Some(t) = timeout {
            r.set_timeout(t);
        }
        r
    }

    /// The broker names a consumer group should receive `topic` from
    /// (QueryAssignment); fails fast when the endpoint or topic is missing.
    pub async fn assignments(&self, topic: &str, group: &str) -> Result<Vec<String>> {
        let req = pb::QueryAssignmentRequest {
            topic: resource(topic),
            group: resource(group),
            endpoints: None,
        };
        let resp = self
            .channel()
            .query_assignment(self.request(req, Some(Duration::from_secs(5))))
            .await?
            .into_inner();
        if !is_ok(&resp.status) {
            return Err(refused("QueryAssignment", resp.status));
        }
        let mut brokers: Vec<String> = resp
            .assignments
            .into_iter()
            .filter_map(|a| a.message_queue?.broker.map(|b| b.name))
            .collect();
        brokers.dedup();
        Ok(brokers)
    }

    /// Checks that `topic` has a route (QueryRoute).
    pub async fn route(&self, topic: &str) -> Result<usize> {
        let req = pb::QueryRouteRequest {
            topic: resource(topic),
            endpoints: None,
        };
        let resp = self
            .channel()
            .query_route(self.request(req, Some(Duration::from_secs(5))))
            .await?
            .into_inner();
        if !is_ok(&resp.status) {
            return Err(refused("QueryRoute", resp.status));
        }
        Ok(resp.message_queues.len())
    }

    /// One SendMessage carrying `messages`; every entry must be OK.
    pub async fn send(&self, messages: Vec<pb::Message>, timeout: Duration) -> Result<()> {
        let req = pb::SendMessageRequest { messages };
        let resp = self
            .channel()
            .send_message(self.request(req, Some(timeout)))
            .await?
            .into_inner();
        if !is_ok(&resp.status) {
            let failed = resp.entries.into_iter().find(|e| !is_ok(&e.status));
            return Err(refused(
                "SendMessage",
                failed.and_then(|e| e.status).or(resp.status),
            ));
        }
        Ok(())
    }

    /// One ReceiveMessage from `broker`'s queues of `topic` (long polling
    /// `poll`); MESSAGE_NOT_FOUND is an empty result.
    pub async fn receive(
        &self,
        group: &str,
        topic: &str,
        broker: &str,
        batch: i32,
        invisible: Duration,
        poll: Duration,
    ) -> Result<Received> {
        use pb::receive_message_response::Content;
        let req = pb::ReceiveMessageRequest {
            group: resource(group),
            message_queue: Some(pb::MessageQueue {
                topic: resource(topic),
                id: -1,
                permission: pb::Permission::ReadWrite as i32,
                broker: Some(pb::Broker {
                    name: broker.to_owned(),
                    id: 0,
                    endpoints: None,
                }),
                accept_message_types: vec![],
            }),
            filter_expression: Some(pb::FilterExpression {
                r#type: pb::FilterType::Tag as i32,
                expression: "*".to_owned(),
            }),
            batch_size: batch,
            invisible_duration: Some(convert::duration(invisible.as_millis() as i64)),
            auto_renew: false,
            long_polling_timeout: Some(convert::duration(poll.as_millis() as i64)),
            attempt_id: None,
        };
        let mut stream = self
            .channel()
            .receive_message(self.request(req, Some(poll + Duration::from_secs(3))))
            .await?
            .into_inner();
        let mut messages = Vec::with_capacity(batch.max(0) as usize);
        let mut status = None;
        while let Some(item) = stream.message().await? {
            match item.content {
                Some(Content::Status(s)) => status = Some(s),
                Some(Content::Message(m)) => messages.push(m),
                Some(Content::DeliveryTimestamp(_)) | None => {}
            }
        }
        match status {
            Some(s) if s.code == Code::MessageNotFound as i32 => Ok(Received { messages }),
            s if is_ok(&s) => Ok(Received { messages }),
            s => Err(refused("ReceiveMessage", s)),
        }
    }

    /// One AckMessage for every message of a batch.
    pub async fn ack(&self, group: &str, topic: &str, messages: &[pb::Message]) -> Result<()> {
        let entries = messages
            .iter()
            .filter_map(|m| {
                let sys = m.system_properties.as_ref()?;
                Some(pb::AckMessageEntry {
                    message_id: sys.message_id.clone(),
                    receipt_handle: sys.receipt_handle.clone()?,
                    lite_topic: None,
                })
            })
            .collect::<Vec<_>>();
        if entries.is_empty() {
            return Ok(());
        }
        let req = pb::AckMessageRequest {
            group: resource(group),
            topic: resource(topic),
            entries,
        };
        let resp = self
            .channel()
            .ack_message(self.request(req, Some(Duration::from_secs(5))))
            .await?
            .into_inner();
        if !is_ok(&resp.status) {
            let failed = resp.entries.into_iter().find(|e| !is_ok(&e.status));
            return Err(refused(
                "AckMessage",
                failed.and_then(|e| e.status).or(resp.status),
            ));
        }
        Ok(())
    }
}

/// A normal message for SendMessage, as an official client builds it.
pub fn message(
    topic: &str,
    body: &Bytes,
    message_id: String,
    tag: Option<&str>,
    key: Option<String>,
) -> pb::Message {
    pb::Message {
        topic: resource(topic),
        user_properties: Default::default(),
        system_properties: Some(pb::SystemProperties {
            tag: tag.map(str::to_owned),
            keys: key.into_iter().collect(),
            message_id,
            body_encoding: pb::Encoding::Identity as i32,
            message_type: pb::MessageType::Normal as i32,
            born_timestamp: Some(convert::timestamp(super::produce::now_millis())),
            ..Default::default()
        }),
        body: body.clone(),
    }
}
