//! preStop hooks that do nothing but sleep (docs/design.md §9.1).
//!
//! `preStop: {exec: {command: [sleep, "5"]}}` (or `sh -c "sleep 5"`, or
//! the native `preStop: {sleep: {seconds: 5}}`) is the usual workaround
//! for what the agent's drain does: keep the container serving while its
//! Services' endpoints catch up. Such a hook is replaced by the drain hook
//! with the sleep as a floor (`/drain?min=5s`): the container is held
//! until the drain has finished and at least as long as it slept before,
//! so nothing it served — other ports included — gets less time than the
//! sleep gave it. The pod's grace period is not raised for the sleep: it
//! bounded the sleep before and bounds the hook now.
//!
//! Only a hook that is *exactly* a sleep of a literal duration counts:
//! anything else in it (`sleep 5 && curl …`, `sleep $DELAY`, `sleep
//! infinity`, a second command) might matter, and the hook is kept.

use std::collections::BTreeMap;
use std::time::Duration;

use goaway_transport::policy::GoDuration;
use k8s_openapi::api::core::v1::LifecycleHandler;

/// Pod annotation set when injection replaced sleeping preStop hooks: a
/// JSON object from each such container's name to its hook as it was,
/// which `uninject` puts back.
pub const ANNOTATION_REPLACED_PRE_STOP: &str = "goaway.dev/injected-replaced-pre-stop";

/// The shells whose `-c "sleep N"` counts as a sleep.
const SHELLS: [&str; 4] = ["sh", "bash", "ash", "dash"];
/// Where an `exec` hook's `sleep` or shell may live.
const BIN_DIRS: [&str; 3] = ["", "/bin/", "/usr/bin/"];

/// How long `handler` sleeps, when sleeping is all it does.
pub fn pure_sleep(handler: &LifecycleHandler) -> Option<Duration> {
    let others = handler.http_get.is_some() || handler.tcp_socket.is_some();
    match (&handler.sleep, &handler.exec) {
        (Some(sleep), None) if !others => {
            u64::try_from(sleep.seconds).ok().map(Duration::from_secs)
        }
        (None, Some(exec)) if !others => exec_sleep(exec.command.as_deref()?),
        _ => None,
    }
}

/// `[sleep, N]` or `[<shell>, -c, "sleep N"]`, each program by its bare
/// name or under `/bin` or `/usr/bin`.
fn exec_sleep(argv: &[String]) -> Option<Duration> {
    let is = |arg: &str, names: &[&str]| {
        BIN_DIRS
            .iter()
            .any(|dir| arg.strip_prefix(dir).is_some_and(|n| names.contains(&n)))
    };
    match argv {
        [program, seconds] if is(program, &["sleep"]) => sleep_argument(seconds),
        [shell, flag, script] if is(shell, &SHELLS) && flag == "-c" => {
            let words: Vec<&str> = script.split_whitespace().collect();
            match words[..] {
                [program, seconds] | ["exec", program, seconds] if is(program, &["sleep"]) => {
                    sleep_argument(seconds)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// A `sleep` argument as coreutils and busybox read it: a decimal number
/// of seconds, optionally suffixed `s`, `m`, `h` or `d`. Nothing else
/// (no variables, quotes, `infinity` or exponents).
fn sleep_argument(arg: &str) -> Option<Duration> {
    let (number, unit) = match arg.char_indices().last()? {
        (at, 's') => (&arg[..at], 1.0),
        (at, 'm') => (&arg[..at], 60.0),
        (at, 'h') => (&arg[..at], 3600.0),
        (at, 'd') => (&arg[..at], 86400.0),
        _ => (arg, 1.0),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && fraction.is_empty() || !digits(whole) || !digits(fraction) {
        return None;
    }
    let seconds: f64 = format!("0{number}").parse().ok()?;
    Duration::try_from_secs_f64(seconds * unit).ok()
}

/// The drain hook's path with `sleep` as its floor (`/drain?min=5s`).
pub fn drain_path_with_floor(drain_path: &str, sleep: Duration) -> String {
    format!("{drain_path}?min={}", GoDuration::from(sleep))
}

/// What was done, for the webhook's Event and `inject`'s note.
pub fn replaced_note(replaced: &[(String, Duration)]) -> String {
    let list: Vec<String> = replaced
        .iter()
        .map(|(name, sleep)| format!("{name} (sleep {})", GoDuration::from(*sleep)))
        .collect();
    format!(
        "the preStop hook of container(s) {} only slept, and is replaced by the goaway agent's drain, which holds the container until the drain has finished and at least as long as the sleep; the original is in the annotation {ANNOTATION_REPLACED_PRE_STOP}, and goaway-operator uninject restores it",
        list.join(", ")
    )
}

/// The annotation's value: each container's original hook.
pub fn record(replaced: &BTreeMap<String, LifecycleHandler>) -> String {
    serde_json::to_string(replaced).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(yaml: &str) -> LifecycleHandler {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_hook_that_only_sleeps_is_found_with_its_length() {
        for (yaml, seconds) in [
            ("sleep: {seconds: 5}", 5.0),
            ("sleep: {seconds: 0}", 0.0),
            ("exec: {command: [sleep, '5']}", 5.0),
            ("exec: {command: [/bin/sleep, '10']}", 10.0),
            ("exec: {command: [/usr/bin/sleep, 2.5]}", 2.5),
            ("exec: {command: [sleep, 1m]}", 60.0),
            ("exec: {command: [sleep, .5s]}", 0.5),
            ("exec: {command: [sh, -c, 'sleep 5']}", 5.0),
            ("exec: {command: [/bin/sh, -c, '  sleep 15 ']}", 15.0),
            ("exec: {command: [/bin/bash, -c, exec sleep 3]}", 3.0),
            ("exec: {command: [/usr/bin/dash, -c, /bin/sleep 7]}", 7.0),
        ] {
            assert_eq!(
                pure_sleep(&hook(yaml)),
                Some(Duration::from_secs_f64(seconds)),
                "{yaml}"
            );
        }
    }

    #[test]
    fn what_only_looks_like_a_sleep_is_not_one() {
        for yaml in [
            "exec: {command: [sh, -c, 'sleep 5 && curl -s localhost/quit']}",
            "exec: {command: [sh, -c, 'sleep 5; kill 1']}",
            "exec: {command: [sh, -c, 'sleep 5 &']}",
            "exec: {command: [sh, -c, 'sleep $DELAY']}",
            "exec: {command: [sh, -c, 'sleep \"5\"']}",
            "exec: {command: [sh, -c, 'sleep 5', extra]}",
            "exec: {command: [sh, -c, sleep]}",
            "exec: {command: [sh, sleep 5]}",
            "exec: {command: [sh, -ec, sleep 5]}",
            "exec: {command: [python, -c, 'sleep 5']}",
            "exec: {command: [sleep, infinity]}",
            "exec: {command: [sleep, 1e3]}",
            "exec: {command: [sleep, '5', '5']}",
            "exec: {command: [sleep, '-5']}",
            "exec: {command: [sleep, '.']}",
            "exec: {command: [sleep, '']}",
            "exec: {command: [/opt/sleep, '5']}",
            "exec: {command: [nginx, -s, quit]}",
            "exec: {command: []}",
            "exec: {}",
            "httpGet: {path: /quit, port: 8080}",
            "tcpSocket: {port: 8080}",
            "sleep: {seconds: -1}",
        ] {
            assert_eq!(pure_sleep(&hook(yaml)), None, "{yaml}");
        }
    }

    #[test]
    fn the_floor_is_written_as_a_go_duration() {
        assert_eq!(
            drain_path_with_floor("/drain", Duration::from_secs(5)),
            "/drain?min=5s"
        );
        assert_eq!(
            drain_path_with_floor("/drain", Duration::from_millis(90_500)),
            "/drain?min=1m30.5s"
        );
    }
}
