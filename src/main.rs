use clap::Parser;
use orchestr8_async::config::Config;
use tracing_subscriber::EnvFilter;

fn main() {
    let cfg = Config::parse();
    // stdout carries the MCP protocol (or a CLI command's output): logs go to stderr only.
    let default = if cfg.command.is_some() {
        "warn"
    } else {
        "info"
    };
    let filter = cfg.log.as_deref().unwrap_or(default);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new(default)))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("orchestr8-async-server: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if cfg.command.is_some() {
        let code = runtime.block_on(orchestr8_async::cli::run(cfg));
        std::process::exit(code);
    }
    let code = match runtime.block_on(orchestr8_async::app::run(cfg)) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("orchestr8-async-server: {e:#}");
            1
        }
    };
    // Exit without dropping the runtime: after a SIGTERM, tokio's stdin reader may still be
    // blocked in read(2) on a pipe the client keeps open, and dropping the runtime would wait
    // for it forever. Everything durable has been flushed by now.
    std::process::exit(code);
}
