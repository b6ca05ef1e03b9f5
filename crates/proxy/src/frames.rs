//! The stream a ReceiveMessage answers with. The popped batch is queued at
//! once (room for a whole batch), so the task that popped it and the
//! connection do not take turns once per message; whatever a vanished
//! client left in the queue is handed back to the broker when the stream is
//! dropped, so those messages become visible again at once instead of after
//! their invisible time.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
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
    rx: mpsc::Receiver<Frame>,
    hand_back: Option<HandBack>,
}

impl Frames {
    pub fn new(rx: mpsc::Receiver<Frame>, hand_back: HandBack) -> Frames {
        Frames {
            rx,
            hand_back: Some(hand_back),
        }
    }
}

impl Stream for Frames {
    type Item = Frame;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        // From here on the popping task's sends fail and it hands back what
        // it still holds; what is already queued is handed back here.
        self.rx.close();
        let mut receipts = Vec::new();
        while let Ok(frame) = self.rx.try_recv() {
            if let Ok(pb::ReceiveMessageResponse {
                content: Some(pb::receive_message_response::Content::Message(m)),
            }) = frame
            {
                if let Some(r) = m.system_properties.and_then(|s| s.receipt_handle) {
                    receipts.push(r);
                }
            }
        }
        if receipts.is_empty() {
            return;
        }
        let (Some(hb), Ok(rt)) = (self.hand_back.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        rt.spawn(async move {
            for r in receipts {
                crate::service::give_back(&hb.backend, &hb.addr, &hb.group, &hb.topic, &r).await;
            }
        });
    }
}
