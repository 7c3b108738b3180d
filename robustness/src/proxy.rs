//! A TCP proxy in front of each member's client URL, so that client traffic can be cut without
//! touching the server: `Drop` closes every connection and refuses new ones (a crashed load
//! balancer, a reset), `Blackhole` stops forwarding in both directions while keeping the
//! connections open (packets lost; what was sent arrives late, if at all, once healed),
//! `Delay` forwards every chunk that much later (a slow or congested client link).
//! Only loopback addresses are used.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Drop,
    Blackhole,
    Delay(Duration),
}

pub struct Proxy {
    pub address: String,
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target` (127.0.0.1:port).
    pub async fn start(target: String) -> Result<Proxy, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("proxy bind: {e}"))?;
        let address = listener
            .local_addr()
            .map_err(|e| format!("proxy address: {e}"))?
            .to_string();
        let target: SocketAddr = target
            .parse()
            .map_err(|e| format!("proxy target {target}: {e}"))?;
        if !target.ip().is_loopback() {
            return Err(format!("proxy target {target} is not a loopback address"));
        }
        let (mode, watcher) = watch::channel(Mode::Pass);
        let task = tokio::spawn(accept(listener, target, watcher));
        Ok(Proxy {
            address,
            mode,
            task,
        })
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, mode: watch::Receiver<Mode>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        if *mode.borrow() == Mode::Drop {
            drop(client);
            continue;
        }
        connections.spawn(forward(client, target, mode.clone()));
        // Reap finished connections so the set stays small.
        while connections.try_join_next().is_some() {}
    }
}

async fn forward(client: TcpStream, target: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut up = vec![0u8; 64 << 10];
    let mut down = vec![0u8; 64 << 10];
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Drop => return,
            Mode::Blackhole => {
                if mode.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Mode::Pass | Mode::Delay(_) => {}
        }
        // A delay holds the chunk just read (and, the link being one task, the other
        // direction too) before it is passed on: latency added to both ways of the link.
        let delay = match current {
            Mode::Delay(d) => d,
            _ => Duration::ZERO,
        };
        tokio::select! {
            read = client_read.read(&mut up) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    tokio::time::sleep(delay).await;
                    if server_write.write_all(&up[..n]).await.is_err() { return }
                }
            },
            read = server_read.read(&mut down) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    tokio::time::sleep(delay).await;
                    if client_write.write_all(&down[..n]).await.is_err() { return }
                }
            },
            changed = mode.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback echo server: what the proxy forwards comes back.
    async fn echo() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        address
    }

    async fn round_trip(stream: &mut TcpStream) -> Result<Duration, String> {
        let started = std::time::Instant::now();
        stream.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut buf))
            .await
            .map_err(|_| "no answer within 10 s".to_string())?
            .map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"ping");
        Ok(started.elapsed())
    }

    #[tokio::test]
    async fn pass_delay_and_drop() {
        let proxy = Proxy::start(echo().await).await.expect("proxy");
        let mut stream = TcpStream::connect(&proxy.address).await.expect("connect");
        round_trip(&mut stream).await.expect("passes");
        proxy.set(Mode::Delay(Duration::from_millis(150)));
        let took = round_trip(&mut stream).await.expect("delayed, not lost");
        // Held once each way.
        assert!(took >= Duration::from_millis(300), "round trip {took:?}");
        proxy.set(Mode::Drop);
        let mut buf = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("a dropped link closes the connection within 10 s");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    #[tokio::test]
    async fn only_loopback_targets() {
        assert!(Proxy::start("10.0.0.1:2379".into()).await.is_err());
    }
}
