//! `gateway`: run a Gatehouse config, check one, explain which route a request takes, or
//! probe a health endpoint.
//! A config with a `[platform]` section also runs the backend services it names in the same
//! process (see [`platform`]).

mod docs;
mod logging;
mod platform;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::{Parser, Subcommand};
use gateway_core::routing::RoutedRequest;
use gateway_core::{FilterRegistry, Gateway, Snapshot};

/// Gatehouse: an edge API gateway on Pingora.
#[derive(Parser)]
#[command(name = "gateway", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a config: proxy and admin listeners, reloading the file when it changes or on SIGHUP;
    /// with a `[platform]` section, the backend services it names too.
    Run {
        /// The config file.
        #[arg(long, short, default_value = "config/gateway.toml")]
        config: PathBuf,
    },
    /// Check a config without binding any port: print every problem and exit 1, or exit 0.
    Check {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show which route a request would take, and why the routes before it did not match.
    Explain {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Request method, e.g. GET.
        method: String,
        /// Request URL (`http://host/path?query`) or just a path.
        url: String,
        /// A request header, `name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
    /// GET a URL and exit 0 on a 2xx answer, 1 otherwise: the health check of an image with
    /// no shell or curl (a Compose `healthcheck`, a Docker `HEALTHCHECK`).
    Probe {
        /// The URL, e.g. `http://127.0.0.1:9090/ready`.
        url: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 2)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config } => {
            logging::init_console();
            return check(&config);
        }
        Command::Explain {
            config,
            method,
            url,
            headers,
        } => {
            logging::init_console();
            explain(&config, &method, &url, &headers)
        }
        Command::Probe { url, timeout } => probe(&url, timeout),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn probe(url: &str, timeout: u64) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime
        .block_on(async {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(timeout))
                .build()?;
            client.get(url).send().await
        })
        .with_context(|| format!("GET {url}"))?
        .status();
    println!("{url}: {status}");
    if status.is_success() {
        Ok(())
    } else {
        Err(anyhow!("GET {url} answered {status}"))
    }
}

fn run(config: &Path) -> anyhow::Result<()> {
    // The subscriber depends on `[observability]` (span export), so the file is read before
    // anything logs. A file that does not load gets console logging, and the builder below
    // reports why.
    let telemetry = match gateway_core::Config::load_file(config) {
        Ok(c) => logging::init(&c.observability)?,
        Err(_) => logging::init_console(),
    };
    let platform = match std::fs::read_to_string(config) {
        Ok(text) => platform::parse(config, &text)?,
        Err(_) => None, // the builder below says why the file cannot be read
    };
    let gateway = Gateway::builder()
        .config_file(config)
        .reload_on_sighup(true)
        .build()?;
    // Services first: the gateway's first JWKS fetch should find the user service up.
    let services = platform.as_ref().map(platform::start).transpose()?;
    let snapshot = gateway.store().load();
    tracing::info!(
        config = %config.display(),
        listen = ?snapshot.config.server.listen,
        admin = %snapshot.config.admin.listen,
        routes = snapshot.router.routes().len(),
        "gatehouse starting"
    );
    let served = gateway.run();
    if let Some(services) = services {
        services.stop();
    }
    telemetry.shutdown();
    Ok(served?)
}

fn check(config: &Path) -> ExitCode {
    // Build the snapshot `run` would serve (route compilation included), without binding or
    // spawning anything, so that "ok" here means `run` and a reload accept the file too.
    let loaded = gateway_core::config::Source::read(config).and_then(|source| {
        Snapshot::from_source(&source, 1, None, &FilterRegistry::builtin()).map(|s| (s, source))
    });
    match loaded {
        Ok((snapshot, source)) => {
            if let Err(e) = platform::parse(config, &source.text) {
                println!("{e}");
                return ExitCode::FAILURE;
            }
            let c = &snapshot.config;
            for warning in &snapshot.warnings {
                println!("{}: warning: {warning}", config.display());
            }
            println!(
                "{}: ok ({}, {})",
                config.display(),
                count(c.upstreams.len(), "upstream"),
                count(c.routes.len(), "route")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for line in e.lines() {
                println!("{line}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `1 route`, `2 routes`.
fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

fn explain(config: &Path, method: &str, url: &str, headers: &[String]) -> anyhow::Result<()> {
    let source = gateway_core::config::Source::read(config)?;
    let snapshot = Snapshot::from_source(&source, 1, None, &FilterRegistry::builtin())?;
    let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| anyhow!("{method:?} is not an HTTP method"))?;
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL"))?;
    let mut header_map = http::HeaderMap::new();
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("header {h:?} is not `name: value`"))?;
        header_map.append(
            http::HeaderName::from_bytes(name.trim().as_bytes())
                .with_context(|| format!("bad header name in {h:?}"))?,
            http::HeaderValue::from_str(value.trim())
                .with_context(|| format!("bad header value in {h:?}"))?,
        );
    }
    let routed = RoutedRequest::new(&method, &uri, &header_map, true)
        .map_err(|e| anyhow!("{e}: {}", uri.path()))?;
    let view = routed.view();
    let explanation = snapshot.router.explain(&view);
    println!("{explanation}");
    if let Some(route) = explanation
        .matched
        .as_ref()
        .and_then(|name| snapshot.router.routes().iter().find(|r| &*r.name == name))
    {
        println!(
            "   upstream {:?}, forwarded path {:?}",
            &**route.upstream.name(),
            route.upstream_path(&routed.path)
        );
    }
    Ok(())
}
