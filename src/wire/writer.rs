//! The writing half of a connection: a task that owns the socket's write half, encodes the
//! frames it is sent, and flushes once per burst (every frame already queued goes out in
//! one write). Dropping every sender closes the socket's write side after the queued frames.

use futures::SinkExt;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::codec::FramedWrite;

use super::codec::{Frame, FrameCodec};

/// Queues frames for a connection's writer task.
pub type FrameSender = mpsc::UnboundedSender<Frame>;

/// Starts the writer task for `write` on the current thread's runtime.
pub fn spawn_writer<W: AsyncWrite + Unpin + 'static>(write: W) -> FrameSender {
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    tokio::task::spawn_local(async move {
        let mut sink = FramedWrite::new(write, FrameCodec::new(usize::MAX));
        'outer: while let Some(frame) = rx.recv().await {
            if let Err(e) = sink.feed(frame).await {
                tracing::debug!(error = %e, "connection write failed");
                break;
            }
            while let Ok(frame) = rx.try_recv() {
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
    tx
}
