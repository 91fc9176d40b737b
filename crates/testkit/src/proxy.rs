//! A TCP proxy on loopback that a test can cut and restore, to take one node off Redis while
//! the others keep it, or to drop a client's connection without a close frame and send its
//! reconnect to another node (`point_at`).

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub struct TcpProxy {
    pub port: u16,
    /// The upstream port of connections opened from now on.
    target: Arc<AtomicU16>,
    cut: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl TcpProxy {
    /// Forwards 127.0.0.1:<port> to 127.0.0.1:<target>.
    pub async fn start(target: u16) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(AtomicU16::new(target));
        let cut = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (to, cut_flag, link_list) = (target.clone(), cut.clone(), links.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if cut_flag.load(Ordering::Acquire) {
                    continue; // dropped: the connection is refused as soon as it opens
                }
                let upstream = to.load(Ordering::Acquire);
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                link_list.lock().unwrap().push(link.abort_handle());
            }
        })
        .abort_handle();
        TcpProxy {
            port,
            target,
            cut,
            links,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Drops every forwarded connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    /// Refuses new connections, leaving the open ones be (they end when their upstream dies).
    pub fn refuse_new(&self) {
        self.cut.store(true, Ordering::Release);
    }

    /// Sends connections opened from now on to 127.0.0.1:<port>.
    pub fn point_at(&self, port: u16) {
        self.target.store(port, Ordering::Release);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::Release);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
