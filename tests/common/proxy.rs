//! A TCP proxy on loopback that can blackhole the connections it carries: they stop forwarding
//! in both directions but stay open (no FIN, no RST), as in a network partition or a failover
//! behind a load balancer. Connections made after the blackhole forward normally.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

struct State {
    /// Bumped by every blackhole; a connection accepted in an earlier generation freezes.
    generation: watch::Sender<u64>,
    /// Frozen connections, kept open until the proxy is dropped.
    frozen: Mutex<Vec<(TcpStream, TcpStream)>>,
    accepted: AtomicUsize,
}

/// See the module documentation. Dropping it closes everything it holds.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// A proxy on an ephemeral loopback port forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            generation: watch::channel(0).0,
            frozen: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
        });
        let accepting = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let mut carried = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                accepting.accepted.fetch_add(1, Ordering::SeqCst);
                let state = Arc::clone(&accepting);
                carried.push(tokio::spawn(carry(state, client, upstream)));
            }
        });
        Self { addr, state, task }
    }

    /// Every connection open now stops forwarding and stays open.
    pub fn blackhole_existing(&self) {
        self.state.generation.send_modify(|generation| *generation += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Connections frozen so far.
    pub fn frozen(&self) -> usize {
        self.state.frozen.lock().unwrap().len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn carry(state: Arc<State>, mut client: TcpStream, upstream: SocketAddr) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let mut generation = state.generation.subscribe();
    let born = *generation.borrow_and_update();
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = generation.wait_for(|current| *current > born) => {
            state.frozen.lock().unwrap().push((client, server));
        }
    }
}
