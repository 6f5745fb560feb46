//! `goaway-agent`: parse the command line, start logging, hand over to the
//! library.

use std::process::ExitCode;

use clap::Parser;
use goaway_agent::cli::{Cli, Command};

// jemalloc keeps idle connections smaller than glibc malloc does (see the
// transport's idle_connections benchmark).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc options: return freed memory to the system after about a
/// second (not jemalloc's default ten) from a background thread, so a
/// burst of connection churn does not stay in the sidecar's RSS.
// SAFETY: the symbol jemalloc reads its options from, defined once.
#[allow(non_upper_case_globals, unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:1000\0";

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One netlink transaction: no runtime, no logging set-up.
    if let Command::Intercept(args) = &cli.command {
        return intercept(args);
    }
    // The demo prints its own progress; its clients' reconnect warnings
    // would only bury it.
    let default_filter = match cli.command {
        Command::Demo(_) => "error",
        _ => "info,h2=warn",
    };
    goaway_agent::logging::init(cli.log_format, default_filter);
    // `run` serves on its own worker threads (see workers.rs); this runtime
    // only accepts connections and runs the admin API and signal handling.
    let mut builder = match &cli.command {
        Command::Run(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all();
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("goaway-agent: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => goaway_agent::run::run(*args).await,
            Command::Drain(args) => drain(args).await,
            Command::CheckConfig { file } => goaway_agent::run::check_config(&file),
            Command::Demo(args) => goaway_agent::demo::run(args).await,
            Command::DemoBackend(args) => goaway_agent::demo::run_backend(args).await,
            Command::Intercept(_) => unreachable!("handled before the runtime starts"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("goaway-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn intercept(args: &goaway_agent::cli::InterceptArgs) -> ExitCode {
    use goaway_agent::intercept::{self, Redirect};
    let redirect = Redirect {
        app_port: args.app_port,
        agent_port: args.agent_port,
    };
    let table = intercept::table_name(args.app_port);
    let result = if args.remove {
        intercept::remove(redirect).map(|()| {
            format!(
                "removed the redirect of TCP port {} (nftables table inet {table})",
                args.app_port
            )
        })
    } else {
        intercept::install(redirect).map(|()| {
            format!(
                "inbound TCP to port {} now goes to port {} (nftables table inet {table})",
                args.app_port, args.agent_port
            )
        })
    };
    match result {
        Ok(done) => {
            println!("goaway-agent intercept: {done}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // With its causes, as main prints every other command's error.
            eprintln!("goaway-agent intercept: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}

async fn drain(args: goaway_agent::cli::DrainArgs) -> anyhow::Result<()> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(p)) => Some(std::fs::read_to_string(p)?.trim().to_owned()),
        (None, None) => None,
    };
    let timeout = args
        .timeout
        .to_std()
        .ok_or_else(|| anyhow::anyhow!("--timeout: must not be negative"))?;
    let summary =
        goaway_agent::admin_client::request_drain(&args.admin, token.as_deref(), timeout).await?;
    println!("{}", summary.trim());
    Ok(())
}
