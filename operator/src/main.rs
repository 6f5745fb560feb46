//! `goaway-operator`: parse the command line, start tracing, hand over to
//! the library.

use std::io::Read;

use anyhow::Context as _;
use clap::Parser;
use goaway_operator::cli::{Cli, Command, InjectArgs, LogFormat};
use goaway_operator::manifests as inject;
use goaway_operator::{lifecycle, rbac, run};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // --log-level was checked by the parser; RUST_LOG, when set, wins.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cli.log_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    match cli.command {
        Command::Run(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            let stopped = runtime.block_on(lifecycle::run_until(
                lifecycle::os_signal(),
                lifecycle::SHUTDOWN_TIMEOUT,
                |watch| run::run(*args, watch),
            ));
            match stopped {
                Some(result) => result?,
                None => tracing::warn!(
                    timeout = ?lifecycle::SHUTDOWN_TIMEOUT,
                    "tasks still running after the shutdown timeout; exiting anyway"
                ),
            }
        }
        Command::Inject(args) => inject_command(&args)?,
        Command::Uninject => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("reading manifests from stdin")?;
            let report = inject::uninject_manifests(&input)?;
            print!("{}", report.output);
            for line in &report.injected {
                eprintln!("removed the agent from {line}");
            }
            for line in &report.warnings {
                eprintln!("note: {line}");
            }
        }
        Command::Crd => print!("{}", goaway_operator::crd::manifest()?),
        Command::Rbac => println!("{}", rbac::to_json()),
    }
    Ok(())
}

fn inject_command(args: &InjectArgs) -> anyhow::Result<()> {
    // Flags first: a bad one is refused before any file is read.
    let agent = args.agent.agent_config()?;
    let defaults = args.defaults.policy_defaults()?;
    let mut policies = Vec::new();
    for path in &args.policies {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        policies.extend(
            inject::load_policies(&text, &args.namespace, &defaults)
                .with_context(|| path.display().to_string())?,
        );
    }
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading manifests from stdin")?;
    let report = inject::inject_manifests(
        &input,
        &policies,
        &args.namespace,
        &defaults,
        &agent,
        &mut goaway_operator::inject::new_drain_token,
    )?;
    print!("{}", report.output);
    for line in &report.injected {
        eprintln!("injected {line}");
    }
    for line in &report.notes {
        eprintln!("note: {line}");
    }
    for line in &report.warnings {
        eprintln!("warning: {line}");
    }
    Ok(())
}
