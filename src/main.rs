use clap::Parser;
use orchestr8_async::cli::{Cli, Command};
use orchestr8_async::engine::logfile::LogFile;
use tracing_subscriber::EnvFilter;

fn main() {
    let Cli { cfg, command } = Cli::parse();
    let detached = matches!(command, Some(Command::Engine { detached: true }));
    let serving = matches!(command, None | Some(Command::Engine { .. }));
    // stdout carries the MCP protocol (or a CLI command's output): logs go to stderr, or for a
    // detached engine (which has no stderr anyone reads) to the bounded log next to the database.
    let default = if serving { "info" } else { "warn" };
    let filter = cfg.log.as_deref().unwrap_or(default);
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_env_filter(filter);
    let log_file = detached
        .then(|| LogFile::open(&orchestr8_async::link::log_path(&cfg.db_path())))
        .and_then(|r| {
            r.map_err(|e| eprintln!("orchestr8-async-server: cannot open the log file: {e}"))
                .ok()
        });
    match log_file {
        // Errors writing the log are not reported on stderr: a detached engine's stderr is
        // this same file, and reporting a full disk there would only fail again.
        Some(f) => builder.with_writer(f).log_internal_errors(false).init(),
        None => builder.with_writer(std::io::stderr).init(),
    }
    if let Some(Command::Warden {
        node,
        stale_after_ms,
    }) = &command
    {
        std::process::exit(orchestr8_async::cluster::warden::run(
            node,
            std::time::Duration::from_millis(*stale_after_ms),
        ));
    }
    // Only an engine runs tasks, reads the database and serves many callers at once: it gets a
    // worker thread per core. A session or a CLI command forwards calls over one socket, and on
    // one thread it does so without handing every message between threads.
    let engine = matches!(command, Some(Command::Engine { .. }))
        || (command.is_none() && cfg.mode == orchestr8_async::config::Mode::Api);
    let mut builder = if engine {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("orchestr8-async-server: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = match command {
        None => runtime.block_on(orchestr8_async::app::run(cfg)).map(|()| 0),
        Some(Command::Engine { detached }) => runtime
            .block_on(orchestr8_async::app::run_engine(cfg, detached))
            .map(|end| end.exit_code()),
        Some(cmd) => {
            let code = runtime.block_on(orchestr8_async::cli::run(cfg, cmd));
            std::process::exit(code);
        }
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("orchestr8-async-server: {e:#}");
            1
        }
    };
    // Exit without dropping the runtime: after a signal, tokio's stdin reader may still be
    // blocked in read(2) on a pipe the client keeps open, and dropping the runtime would wait
    // for it forever. Everything durable has been flushed by now.
    std::process::exit(code);
}
