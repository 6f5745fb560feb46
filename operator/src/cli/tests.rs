use std::time::Duration;

use super::*;
use clap::CommandFactory;

#[test]
fn command_line_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn every_run_flag_has_an_environment_variable() {
    let cmd = Cli::command();
    let run = cmd.find_subcommand("run").unwrap();
    for arg in run.get_arguments() {
        if arg.get_long().is_some() && arg.get_id() != "help" && arg.get_id() != "version" {
            assert!(arg.get_env().is_some(), "--{} has no env", arg.get_id());
        }
    }
}

fn parse(args: &[&str]) -> std::result::Result<Cli, String> {
    Cli::try_parse_from(std::iter::once("goaway-operator").chain(args.iter().copied()))
        .map_err(|e| e.to_string())
}

/// The agent and defaults flags of `run`, or of `inject` with a policy.
fn parse_both(flags: &[&str]) -> [std::result::Result<(AgentArgs, PolicyDefaultsArgs), String>; 2] {
    let run = parse(&[&["run"], flags].concat()).map(|cli| match cli.command {
        Command::Run(a) => (a.agent, a.defaults),
        _ => unreachable!(),
    });
    let inject =
        parse(&[&["inject", "-p", "p.yaml"], flags].concat()).map(|cli| match cli.command {
            Command::Inject(a) => (a.agent, a.defaults),
            _ => unreachable!(),
        });
    [run, inject]
}

#[test]
fn agent_flags_the_api_server_would_refuse_do_not_parse_and_the_error_names_the_flag() {
    for (flag, value) in [
        ("--agent-log-format", "xml"),
        ("--agent-image-pull-policy", "Sometimes"),
        ("--agent-image-pull-policy", "always"),
        ("--agent-cpu-request", "lots"),
        ("--agent-memory-request", "32MB"),
        ("--agent-cpu-limit", "-1"),
        ("--agent-memory-limit", "1 Gi"),
        ("--default-drain-delay", "5"),
        ("--default-drain-timeout", "1d"),
        ("--default-drain-goaway-ack-timeout", ""),
        ("--agent-image-pull-secret", "RegCred"),
        ("--agent-image-pull-secret", ""),
        ("--agent-image-pull-secret", "-regcred"),
        ("--agent-image-pull-secret", "reg..cred"),
    ] {
        for result in parse_both(&[&format!("{flag}={value}")]) {
            let err = result
                .err()
                .unwrap_or_else(|| panic!("{flag}={value} parsed"));
            assert!(err.contains(flag), "{flag}={value}: {err}");
        }
    }
}

#[test]
fn good_agent_flags_parse_into_the_agent_config() {
    for result in parse_both(&[
        "--agent-log-format=text",
        "--agent-image-pull-policy=Never",
        "--agent-cpu-request=0.25",
        "--agent-cpu-limit",
        "1",
        "--agent-memory-request=64Mi",
        "--agent-memory-limit=",
    ]) {
        let (agent, defaults) = result.unwrap();
        let config = agent.agent_config().unwrap();
        assert_eq!(
            (
                config.log_format.as_str(),
                config.image_pull_policy.as_str()
            ),
            ("text", "Never")
        );
        assert_eq!(
            [
                config.cpu_request,
                config.cpu_limit,
                config.memory_request,
                config.memory_limit
            ],
            ["0.25", "1", "64Mi", ""]
        );
        assert_eq!(
            defaults.policy_defaults().unwrap(),
            PolicyDefaults::default()
        );
    }
    let [run, _] = parse_both(&[]);
    assert_eq!(
        run.unwrap().0.agent_config().unwrap(),
        AgentConfig::default()
    );
}

#[test]
fn agent_pull_secrets_repeat_or_come_as_one_comma_separated_variable() {
    for result in parse_both(&[
        "--agent-image-pull-secret=regcred",
        "--agent-image-pull-secret",
        "mirror.example-1",
    ]) {
        let config = result.unwrap().0.agent_config().unwrap();
        assert_eq!(config.image_pull_secrets, ["regcred", "mirror.example-1"]);
    }
    // The chart sets the variable from agent.imagePullSecrets.
    let cmd = Cli::command();
    let run = cmd.find_subcommand("run").unwrap();
    let arg = run
        .get_arguments()
        .find(|a| a.get_long() == Some("agent-image-pull-secret"))
        .unwrap();
    assert_eq!(
        arg.get_env().and_then(|e| e.to_str()),
        Some("GOAWAY_AGENT_IMAGE_PULL_SECRETS")
    );
    assert_eq!(arg.get_value_delimiter(), Some(','));
}

#[test]
fn a_request_above_its_limit_is_refused_naming_the_flag() {
    for result in parse_both(&["--agent-cpu-request=2", "--agent-cpu-limit=1500m"]) {
        let err = result.unwrap().0.agent_config().unwrap_err().to_string();
        assert_eq!(
            err,
            "--agent-cpu-request: the CPU request 2 exceeds the limit 1500m; the API server would refuse every injected pod"
        );
    }
    // The default request (32Mi) against a smaller limit; an empty
    // limit (none) or an equal one is fine.
    let [run, _] = parse_both(&["--agent-memory-limit=16Mi"]);
    let err = run.unwrap().0.agent_config().unwrap_err().to_string();
    assert!(
        err.starts_with("--agent-memory-request: the memory request 32Mi exceeds the limit 16Mi"),
        "{err}"
    );
    for flags in [
        &["--agent-memory-limit="][..],
        &["--agent-cpu-request=1", "--agent-cpu-limit=1000m"],
    ] {
        let [run, _] = parse_both(flags);
        run.unwrap().0.agent_config().unwrap();
    }
}

#[test]
fn drain_default_flags_are_go_durations_checked_together() {
    let [run, inject] = parse_both(&[
        "--default-drain-delay=5s",
        "--default-drain-timeout",
        "1m30s",
        "--default-drain-goaway-ack-timeout=2s",
    ]);
    for result in [run, inject] {
        let defaults = result.unwrap().1.policy_defaults().unwrap();
        let d = defaults.drain();
        assert_eq!(
            (d.delay, d.timeout, d.goaway_ack_timeout),
            (
                Some(GoDuration::from_secs(5)),
                Some(GoDuration::from_secs(90)),
                Some(GoDuration::from_secs(2))
            )
        );
    }
    for (flags, message) in [
        (
            &["--default-drain-delay", "-1s"][..],
            "--default-drain-delay: must not be negative (got -1s)",
        ),
        (
            &["--default-drain-timeout=0s"],
            "--default-drain-timeout: must be greater than zero",
        ),
        // A set acknowledgement bound against a set timeout (the built-in
        // bound follows the timeout: a 4s timeout alone is fine).
        (
            &[
                "--default-drain-timeout=4s",
                "--default-drain-goaway-ack-timeout=4s",
            ],
            "--default-drain-goaway-ack-timeout: must be less than drain.timeout (4s)",
        ),
        (
            &[
                "--default-drain-timeout=10s",
                "--default-drain-goaway-ack-timeout=10s",
            ],
            "--default-drain-goaway-ack-timeout: must be less than drain.timeout (10s)",
        ),
    ] {
        for result in parse_both(flags) {
            let err = result.unwrap().1.policy_defaults().unwrap_err().to_string();
            assert!(err.starts_with(message), "{flags:?}: {err}");
        }
    }
}

#[test]
fn forbid_redirect_is_a_switch_of_run_and_inject_and_contradicts_a_redirect_default() {
    let forbidden = |flags: &[&str]| {
        parse_both(flags).map(|r| {
            let defaults = r.unwrap().1.policy_defaults().unwrap();
            defaults.redirect_forbidden()
        })
    };
    assert_eq!(forbidden(&[]), [false, false]);
    assert_eq!(forbidden(&["--forbid-redirect"]), [true, true]);
    // The chart's form: the variable's value as the flag's.
    assert_eq!(forbidden(&["--forbid-redirect=true"]), [true, true]);
    assert_eq!(forbidden(&["--forbid-redirect=false"]), [false, false]);
    for result in parse_both(&["--forbid-redirect=yes"]) {
        assert!(result.is_err());
    }
    let run = Cli::command();
    let arg = run
        .find_subcommand("run")
        .unwrap()
        .get_arguments()
        .find(|a| a.get_id() == "forbid_redirect")
        .unwrap();
    assert_eq!(arg.get_env().unwrap(), "GOAWAY_FORBID_REDIRECT");

    for result in parse_both(&["--forbid-redirect", "--default-interception=redirect"]) {
        let err = result.unwrap().1.policy_defaults().unwrap_err().to_string();
        assert!(
            err.starts_with("--forbid-redirect: contradicts --default-interception redirect"),
            "{err}"
        );
    }
    // Reported beside a drain flag's error, not instead of it.
    let [run, _] = parse_both(&[
        "--forbid-redirect",
        "--default-interception=redirect",
        "--default-drain-timeout=0s",
    ]);
    let err = run.unwrap().1.policy_defaults().unwrap_err().to_string();
    assert!(
        err.contains("--default-drain-timeout") && err.contains("--forbid-redirect"),
        "{err}"
    );
}

fn run_args(flags: &[&str]) -> RunArgs {
    match parse(&[&["run"], flags].concat()).unwrap().command {
        Command::Run(args) => *args,
        _ => unreachable!(),
    }
}

#[test]
fn lease_timing_defaults_to_client_go_and_is_checked_at_start_up() {
    assert_eq!(
        run_args(&[]).lease_timing().unwrap(),
        LeaseTiming::default()
    );
    let timing = run_args(&[
        "--lease-duration=60s",
        "--lease-renew-deadline=40s",
        "--lease-retry-period=500ms",
    ])
    .lease_timing()
    .unwrap();
    assert_eq!(
        (
            timing.duration(),
            timing.renew_deadline(),
            timing.retry_period()
        ),
        (
            Duration::from_secs(60),
            Duration::from_secs(40),
            Duration::from_millis(500)
        )
    );
    for (flags, message) in [
        (
            &["--lease-duration=1500ms"][..],
            "--lease-duration: must be a positive whole number of seconds, at most 2^31-1 (got 1.5s)",
        ),
        (
            &["--lease-duration=0s"],
            "--lease-duration: must be a positive whole number of seconds",
        ),
        // One second more than the Lease's int32 holds.
        (
            &["--lease-duration=2147483648s"],
            "--lease-duration: must be a positive whole number of seconds",
        ),
        // The default 10s renew deadline against a 10s lease.
        (
            &["--lease-duration=10s"],
            "--lease-renew-deadline: need 0 < --lease-retry-period (2s) < --lease-renew-deadline (10s) < --lease-duration (10s)",
        ),
        (
            &["--lease-retry-period=10s"],
            "--lease-renew-deadline: need",
        ),
        (&["--lease-retry-period=0s"], "--lease-renew-deadline: need"),
    ] {
        let err = run_args(flags).lease_timing().unwrap_err().to_string();
        assert!(err.starts_with(message), "{flags:?}: {err}");
    }
}

#[test]
fn webhook_timeout_is_the_api_servers_and_is_checked_at_start_up() {
    assert_eq!(
        run_args(&[]).webhook_timeout().unwrap(),
        crate::webhook::DEFAULT_TIMEOUT
    );
    assert_eq!(
        run_args(&["--webhook-timeout=30s"])
            .webhook_timeout()
            .unwrap(),
        Duration::from_secs(30)
    );
    for flag in ["--webhook-timeout=500ms", "--webhook-timeout=31s"] {
        let err = run_args(&[flag]).webhook_timeout().unwrap_err().to_string();
        assert!(
            err.starts_with("--webhook-timeout: must be between 1s and 30s"),
            "{flag}: {err}"
        );
    }
    assert_eq!(
        run_args(&[]).webhook_server().max_connections,
        crate::webhook::server::DEFAULT_MAX_CONNECTIONS
    );
    assert!(parse(&["run", "--webhook-max-connections=0"]).is_err());
}
