//! The writing half of a connection: a task that owns the socket's write half, encodes the
//! frames it is sent, and flushes once per burst (every frame already queued goes out in
//! one write). Dropping every sender closes the socket's write side after the queued frames.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::SinkExt;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::codec::FramedWrite;

use super::codec::{Frame, FrameCodec};

/// Queues frames for a connection's writer task, and knows how many wait: a connection
/// whose other side stops reading is found out before its queue grows without end.
#[derive(Clone, Debug)]
pub struct FrameSender {
    tx: mpsc::UnboundedSender<Frame>,
    queued: Arc<AtomicUsize>,
}

impl FrameSender {
    /// Queues `frame`; fails once the writer has stopped.
    pub fn send(&self, frame: Frame) -> Result<(), mpsc::error::SendError<Frame>> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.send(frame).inspect_err(|_| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        })
    }

    /// Frames queued and not yet handed to the socket.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// Starts the writer task for `write` on the current thread's runtime.
pub fn spawn_writer<W: AsyncWrite + Unpin + 'static>(write: W) -> FrameSender {
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    let queued = Arc::new(AtomicUsize::new(0));
    let sent = queued.clone();
    tokio::task::spawn_local(async move {
        let mut sink = FramedWrite::new(write, FrameCodec::new(usize::MAX));
        'outer: while let Some(frame) = rx.recv().await {
            sent.fetch_sub(1, Ordering::AcqRel);
            if let Err(e) = sink.feed(frame).await {
                tracing::debug!(error = %e, "connection write failed");
                break;
            }
            while let Ok(frame) = rx.try_recv() {
                sent.fetch_sub(1, Ordering::AcqRel);
                if let Err(e) = sink.feed(frame).await {
                    tracing::debug!(error = %e, "connection write failed");
                    break 'outer;
                }
            }
            if let Err(e) = sink.flush().await {
                tracing::debug!(error = %e, "connection flush failed");
                break;
            }
        }
        let _ = sink.close().await;
    });
    FrameSender { tx, queued }
}
