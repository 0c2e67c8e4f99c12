//! WAN emulation for the embedded server: what loopback hides. S3 answers after 20–60 ms
//! (the added latency lives in the service, see [`super::ServerConfig::latency`]) and gives
//! one connection about 80–100 MiB/s; [`Capped`] holds each connection to a byte rate, in
//! both directions, so a client that moves large objects over one connection at a time
//! shows it.
//!
//! A token bucket per direction with 50 ms of burst: a read or write goes ahead while the
//! bucket is not in debt and then pays for what it moved, so the average rate holds without
//! splitting the caller's buffers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

struct Budget {
    rate: f64,
    tokens: f64,
    at: Instant,
    wait: Option<Pin<Box<Sleep>>>,
}

impl Budget {
    fn new(rate: f64) -> Self {
        Budget {
            rate,
            tokens: 0.0,
            at: Instant::now(),
            wait: None,
        }
    }

    fn burst(&self) -> f64 {
        (self.rate * 0.05).max(16.0 * 1024.0)
    }

    /// Ready once the bucket is out of debt.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if let Some(w) = self.wait.as_mut() {
                ready!(w.as_mut().poll(cx));
                self.wait = None;
            }
            let now = Instant::now();
            self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst());
            self.at = now;
            if self.tokens >= 0.0 {
                return Poll::Ready(());
            }
            let until = now + Duration::from_secs_f64(-self.tokens / self.rate);
            self.wait = Some(Box::pin(tokio::time::sleep_until(until)));
        }
    }

    fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

/// A stream held to a byte rate each way (or passed through untouched).
pub struct Capped<S> {
    inner: S,
    budgets: Option<(Budget, Budget)>,
}

impl<S> Capped<S> {
    /// `bytes_per_sec` each way; None: no cap.
    pub fn new(inner: S, bytes_per_sec: Option<f64>) -> Self {
        Capped {
            inner,
            budgets: bytes_per_sec.map(|r| (Budget::new(r.max(1.0)), Budget::new(r.max(1.0)))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some((read, _)) = this.budgets.as_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        ready!(read.poll_ready(cx));
        // At most one burst at a time, so a large buffer cannot run far ahead of the rate.
        let limit = (read.burst() as usize).min(buf.remaining());
        let mut sub = ReadBuf::new(buf.initialize_unfilled_to(limit));
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut sub))?;
        let n = sub.filled().len();
        buf.advance(n);
        read.spend(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let Some((_, write)) = this.budgets.as_mut() else {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        };
        ready!(write.poll_ready(cx));
        let limit = (write.burst() as usize).min(data.len());
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &data[..limit]))?;
        write.spend(n);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_capped_stream_moves_bytes_at_its_rate_both_ways() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let rate = 4.0 * 1024.0 * 1024.0; // 4 MiB/s
        let mut capped = Capped::new(a, Some(rate));
        let total = 2 * 1024 * 1024;
        let writer = tokio::spawn(async move {
            let mut b = b;
            let mut got = vec![0u8; total];
            b.read_exact(&mut got).await.unwrap();
            b.write_all(&got).await.unwrap();
        });
        let start = std::time::Instant::now();
        capped.write_all(&vec![7u8; total]).await.unwrap();
        let sent = start.elapsed().as_secs_f64();
        let mut back = vec![0u8; total];
        capped.read_exact(&mut back).await.unwrap();
        let both = start.elapsed().as_secs_f64();
        writer.await.unwrap();
        // 2 MiB at 4 MiB/s: about half a second each way (the burst is 200 KiB).
        assert!((0.4..1.0).contains(&sent), "sent in {sent:.2} s");
        assert!((0.85..2.0).contains(&both), "round trip in {both:.2} s");
        assert!(back.iter().all(|b| *b == 7));
    }
}
