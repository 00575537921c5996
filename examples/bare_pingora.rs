//! A bare Pingora reverse proxy for the `peers.sh` layout: listens on 127.0.0.1:18085 with one
//! worker thread and forwards everything to 127.0.0.1:18081 with a deterministic `HttpPeer`
//! (so upstream connections are pooled). It is the baseline Gatehouse's pass-through cost is
//! compared with.
//!
//! ```sh
//! cargo build --release --example bare_pingora
//! bash ../shared/bench/peers.sh -d 10 -- target/release/examples/bare_pingora
//! ```
//!
//! Arguments: `h2c` accepts HTTP/2 prior knowledge next to HTTP/1.1 (as Gatehouse's default
//! listener does); `timeouts` sets the peer timeouts Gatehouse sets by default; `tls` listens
//! with TLS instead (the certificate and key in `BARE_CERT` and `BARE_KEY`, ALPN h2 and
//! http/1.1, as Gatehouse's HTTPS listeners; `benches/tls.sh`). The variables `BARE_LISTEN` and
//! `BARE_UPSTREAM` move it (`benches/notifications.sh` puts it in
//! front of the notification service to compare memory per WebSocket).

use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Result;
use pingora_proxy::{ProxyHttp, Session};

const LISTEN: &str = "127.0.0.1:18085";
const UPSTREAM: &str = "127.0.0.1:18081";

struct Bare {
    upstream: std::net::SocketAddr,
    /// Set the same peer timeouts Gatehouse sets by default (connect 5 s, read/write/idle 60 s).
    timeouts: bool,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        if self.timeouts {
            peer.options.connection_timeout = Some(Duration::from_secs(5));
            peer.options.read_timeout = Some(Duration::from_secs(60));
            peer.options.write_timeout = Some(Duration::from_secs(60));
            peer.options.idle_timeout = Some(Duration::from_secs(60));
        }
        Ok(Box::new(peer))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let h2c = args.iter().any(|a| a == "h2c");
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let proxy = Bare {
        upstream: std::env::var("BARE_UPSTREAM")
            .unwrap_or_else(|_| UPSTREAM.into())
            .parse()
            .expect("upstream address"),
        timeouts: args.iter().any(|a| a == "timeouts"),
    };
    let mut service = pingora_proxy::http_proxy_service(&server.configuration, proxy);
    let listen = std::env::var("BARE_LISTEN").unwrap_or_else(|_| LISTEN.into());
    if args.iter().any(|a| a == "tls") {
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("tls needs {name}"));
        let mut tls = pingora_core::listeners::tls::TlsSettings::intermediate(
            &var("BARE_CERT"),
            &var("BARE_KEY"),
        )
        .expect("tls settings");
        tls.enable_h2();
        service.add_tls_with_settings(&listen, None, tls);
    } else {
        service.add_tcp(&listen);
    }
    if h2c {
        if let Some(app) = service.app_logic_mut() {
            let mut options = HttpServerOptions::default();
            options.h2c = true;
            app.server_options = Some(options);
        }
    }
    server.add_service(service);
    server.run_forever();
}
