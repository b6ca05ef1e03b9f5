//! The stream a ReceiveMessage answers with. The task that pops hands the
//! whole answer (status, delivery timestamp, every message) over in one
//! piece, so the connection's task is woken once per batch instead of
//! taking turns with the popping task once per message; whatever a
//! vanished client left unsent is handed back to the broker when the stream
//! is dropped, so those messages become visible again at once instead of
//! after their invisible time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::oneshot;
use tonic::Status;

use crate::backend::Backend;
use crate::pb;

/// One frame of a ReceiveMessage answer.
pub type Frame = Result<pb::ReceiveMessageResponse, Status>;

/// Where undelivered messages go back to.
pub struct HandBack {
    pub backend: Arc<Backend>,
    pub addr: String,
    pub group: String,
    pub topic: String,
}

/// The receiving end of a ReceiveMessage's frames.
pub struct Frames {
    /// `None` once the answer arrived (or its sender was dropped).
    rx: Option<oneshot::Receiver<Vec<Frame>>>,
    ready: std::vec::IntoIter<Frame>,
    hand_back: Option<HandBack>,
}

impl Frames {
    pub fn new(rx: oneshot::Receiver<Vec<Frame>>, hand_back: HandBack) -> Frames {
        Frames {
            rx: Some(rx),
            ready: Vec::new().into_iter(),
            hand_back: Some(hand_back),
        }
    }
}

/// The receipt handles of the messages among `frames`.
pub fn receipts(frames: impl IntoIterator<Item = Frame>) -> Vec<String> {
    frames
        .into_iter()
        .filter_map(|frame| match frame {
            Ok(pb::ReceiveMessageResponse {
                content: Some(pb::receive_message_response::Content::Message(m)),
            }) => m.system_properties.and_then(|s| s.receipt_handle),
            _ => None,
        })
        .collect()
}

impl Stream for Frames {
    type Item = Frame;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        if let Some(f) = self.ready.next() {
            return Poll::Ready(Some(f));
        }
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(rx).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(answer) => {
                self.rx = None;
                // A sender dropped without an answer ends the stream.
                self.ready = answer.unwrap_or_default().into_iter();
                Poll::Ready(self.ready.next())
            }
        }
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        // From here on the popping task's send fails and it hands back what
        // it holds; an answer already sent, or its unsent rest, is handed
        // back here.
        let mut left = receipts(std::mem::take(&mut self.ready));
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if let Ok(frames) = rx.try_recv() {
                left.extend(receipts(frames));
            }
        }
        if left.is_empty() {
            return;
        }
        let Some(hb) = self.hand_back.take() else {
            return;
        };
        let backend = std::sync::Arc::clone(&hb.backend);
        backend.spawn_detached(async move {
            for r in left {
                crate::service::give_back(&hb.backend, &hb.addr, &hb.group, &hb.topic, &r).await;
            }
        });
    }
}
