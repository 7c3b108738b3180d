//! A TCP proxy in front of each member's client URL, so that client traffic can be cut without
//! touching the server: `Drop` closes every connection and refuses new ones (a crashed load
//! balancer, a reset), `Blackhole` stops forwarding in both directions while keeping the
//! connections open (packets lost; what was sent arrives late, if at all, once healed).
//! Only loopback addresses are used.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Drop,
    Blackhole,
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
            Mode::Pass => {}
        }
        tokio::select! {
            read = client_read.read(&mut up) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if server_write.write_all(&up[..n]).await.is_err() { return },
            },
            read = server_read.read(&mut down) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if client_write.write_all(&down[..n]).await.is_err() { return },
            },
            changed = mode.changed() => if changed.is_err() { return },
        }
    }
}
