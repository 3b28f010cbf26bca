//! `DelayRelay`: a TCP relay on 127.0.0.1 that holds every chunk it reads for a fixed time in
//! each direction, so a loopback server looks `2 × one_way` away (a hub across a WAN). Used by
//! the sidecar's pool measurement and by civic-bench's `wan` scenario.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The relay; dropping it stops accepting (relayed connections run to their end).
pub struct DelayRelay {
    addr: SocketAddr,
    one_way: Duration,
    target: Arc<Mutex<Option<SocketAddr>>>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for DelayRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayRelay")
            .field("addr", &self.addr)
            .field("one_way", &self.one_way)
            .finish_non_exhaustive()
    }
}

impl DelayRelay {
    /// Listens on 127.0.0.1:0; connections accepted before [`DelayRelay::set_target`] are
    /// closed at once.
    pub async fn start(one_way: Duration) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let target = Arc::new(Mutex::new(None));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (t, n) = (target.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Some(to) = *t.lock().unwrap() else {
                    continue;
                };
                n.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(upstream) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (ur, uw) = upstream.into_split();
                    tokio::join!(delayed(cr, uw, one_way), delayed(ur, cw, one_way));
                });
            }
        });
        Ok(Self {
            addr,
            one_way,
            target,
            accepted,
            task,
        })
    }

    /// Starts relaying to `to`.
    pub async fn to(to: SocketAddr, one_way: Duration) -> anyhow::Result<Self> {
        let relay = Self::start(one_way).await?;
        relay.set_target(to);
        Ok(relay)
    }

    /// Where new connections go.
    pub fn set_target(&self, to: SocketAddr) {
        *self.target.lock().unwrap() = Some(to);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The round trip it adds: twice the one-way delay.
    pub fn rtt(&self) -> Duration {
        self.one_way * 2
    }

    /// Connections relayed so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read, in order.
async fn delayed(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0
                || tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((at, data)) = rx.recv().await {
            tokio::time::sleep_until(at.into()).await;
            if to.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
