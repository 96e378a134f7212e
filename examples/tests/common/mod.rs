//! What the example tests share: the example binaries cargo built beside them.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

/// The example `name`, run from the examples' directory with quiet logs.
pub(crate) fn example(name: &str) -> Command {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bin: PathBuf = profile_dir.join("examples").join(name);
    assert!(bin.exists(), "{} is missing: cargo test builds the examples beside the tests", bin.display());
    let mut c = Command::new(bin);
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "warn")
        .env_remove("KAFKA_BROKERS")
        .env_remove("KAFKA_TOPIC")
        .env_remove("KAFKA_GROUP");
    c
}

/// A TCP proxy whose client-to-server direction can be held: while held, nothing the
/// clients send (a consumer's acknowledgements among it) reaches the server, as if they
/// had not sent it yet. Server-to-client bytes flow on.
pub(crate) struct HoldingProxy {
    pub(crate) port: u16,
    /// (held, epoch): connections accepted before the current epoch are cut.
    state: tokio::sync::watch::Sender<(bool, u64)>,
}

impl HoldingProxy {
    /// A proxy on a free local port to `server` (`host:port`), forwarding.
    pub(crate) async fn start(server: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (state, watch) = tokio::sync::watch::channel((false, 0u64));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = tokio::net::TcpStream::connect(server).await else { continue };
                let ((mut client_rx, mut client_tx), (mut server_rx, mut server_tx)) =
                    (client.into_split(), upstream.into_split());
                tokio::spawn(async move { tokio::io::copy(&mut server_rx, &mut client_tx).await });
                let mut watch = watch.clone();
                let epoch = watch.borrow().1;
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match client_rx.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        // Read after the hold began: kept until it ends, dropped if cut.
                        let Ok(now) = watch.wait_for(|(held, _)| !held).await.map(|s| *s) else { return };
                        if now.1 != epoch || server_tx.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        HoldingProxy { port, state }
    }

    /// Holds what the clients send.
    pub(crate) fn hold(&self) {
        self.state.send_modify(|s| s.0 = true);
    }

    /// Cuts every connection open now (what they held never reaches the server) and
    /// forwards again, for the connections to come.
    pub(crate) fn cut(&self) {
        self.state.send_modify(|s| *s = (false, s.1 + 1));
    }
}
