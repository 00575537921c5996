//! A bare Pingora reverse proxy for the `peers.sh` layout: listens on 127.0.0.1:18085 with one
//! worker thread and forwards everything to 127.0.0.1:18081 with a deterministic `HttpPeer`
//! (so upstream connections are pooled). It is the baseline Gatehouse's pass-through cost is
//! compared with.
//!
//! ```sh
//! cargo build --release --example bare_pingora
//! bash ../shared/bench/peers.sh -d 10 -- target/release/examples/bare_pingora
//! bash ../shared/bench/peers.sh -d 10 -- target/release/examples/bare_pingora h2c   # as Gatehouse's default listener
//! ```

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
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let h2c = std::env::args().skip(1).any(|a| a == "h2c");
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let proxy = Bare {
        upstream: UPSTREAM.parse().expect("upstream address"),
    };
    let mut service = pingora_proxy::http_proxy_service(&server.configuration, proxy);
    service.add_tcp(LISTEN);
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
