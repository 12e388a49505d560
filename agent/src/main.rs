//! weft-agent: flags, logging and the runtime; the rest is in the library
//! (`daemon::run`).

use std::process::ExitCode;

use clap::Parser;
use tracing::error;
use weft_agent::{config, daemon};

fn main() -> ExitCode {
    let args = config::Args::parse();
    let check_only = args.check_config;
    let cfg = match config::resolve(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weft-agent: {e:#}");
            return ExitCode::from(2);
        }
    };
    weft_common::logging::init(cfg.log_format);
    if check_only {
        println!(
            "{}",
            serde_json::to_string_pretty(&cfg.printed()).expect("config serializes")
        );
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-agent: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(daemon::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
