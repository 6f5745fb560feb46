use std::time::Duration;

use super::*;

fn field_errors(text: &str, strictness: Strictness) -> Vec<String> {
    match Policy::load(text, strictness) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e.fields().into_iter().map(|f| f.field).collect(),
    }
}

#[test]
fn empty_document_is_all_defaults() {
    for text in ["", "\n", "# nothing\n---\n"] {
        let (p, warnings) = Policy::load(text, Strictness::Permissive).unwrap();
        assert_eq!(p, Policy::default());
        assert!(warnings.is_empty());
    }
    // A group left empty or written as null is that group's defaults.
    for text in [
        "server:\n",
        "server: ~\n",
        "server: null\nenforcement: ~\nupstream: ~\ndrain: ~\nrebalance: ~\n",
    ] {
        let (p, _) = Policy::load(text, Strictness::Permissive).unwrap();
        assert_eq!(p, Policy::default(), "{text}");
    }
    let (p, _) = Policy::load(r#"{"drain": null}"#, Strictness::Permissive).unwrap();
    assert_eq!(p, Policy::default());
    let s = Policy::default().server_params();
    assert_eq!(s.time, Duration::from_secs(7200));
    assert_eq!(s.timeout, Duration::from_secs(20));
    assert_eq!(s.max_idle, None);
    assert_eq!(s.max_age, None);
    assert_eq!(s.max_age_grace, None);
    assert_eq!(s.min_time, Duration::from_secs(300));
    assert!(!s.permit_without_stream);
    assert_eq!(s.goaway_ack_timeout, Duration::from_secs(5));
    let c = Policy::default().client_params();
    assert_eq!(c.time, None);
    assert_eq!(c.timeout, Duration::from_secs(20));
    let d = Policy::default().drain_params();
    assert_eq!(d.delay, Duration::ZERO);
    assert_eq!(d.timeout, Duration::from_secs(30));
    let r = Policy::default().rebalance_params();
    assert!(!r.enabled, "rebalancing is opt-in");
    assert_eq!(r.window, Duration::from_secs(30));
    assert_eq!(r.max_percent, 50);
}

#[test]
fn full_yaml_file_parses_camel_case() {
    let text = r#"
server:
  time: 30s
  timeout: 5s
  maxConnectionIdle: 15m
  maxConnectionAge: 1h30m
  maxConnectionAgeGrace: 30s
enforcement:
  minTime: 10s
  permitWithoutStream: true
upstream:
  time: 1m
  timeout: 10s
  permitWithoutStream: true
drain:
  delay: 5s
  timeout: 45s
  goawayAckTimeout: 2s
rebalance:
  enabled: true
  window: 2m
  maxPercent: 25
"#;
    let (p, warnings) = Policy::load(text, Strictness::Production).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let s = p.server_params();
    assert_eq!(s.time, Duration::from_secs(30));
    assert_eq!(s.max_age, Some(Duration::from_secs(5400)));
    assert_eq!(s.max_age_grace, Some(Duration::from_secs(30)));
    assert_eq!(s.min_time, Duration::from_secs(10));
    assert!(s.permit_without_stream);
    assert_eq!(s.goaway_ack_timeout, Duration::from_secs(2));
    let c = p.client_params();
    assert_eq!(c.time, Some(Duration::from_secs(60)));
    assert!(c.permit_without_stream);
    assert_eq!(p.drain_params().delay, Duration::from_secs(5));
    let r = p.rebalance_params();
    assert!(r.enabled);
    assert_eq!(r.window, Duration::from_secs(120));
    assert_eq!(r.max_percent, 25);

    // Serialising and re-reading gives the same policy (JSON and YAML).
    let json = serde_json::to_string(&p).unwrap();
    assert!(json.contains("\"maxConnectionAge\":\"1h30m0s\""), "{json}");
    assert_eq!(Policy::from_json(&json).unwrap(), p);
    let yaml = serde_yaml::to_string(&p).unwrap();
    assert_eq!(Policy::from_yaml(&yaml).unwrap(), p);
}

#[test]
fn defaults_are_not_serialised() {
    let p = Policy::from_yaml("server:\n  time: 1m\n").unwrap();
    assert_eq!(
        serde_json::to_string(&p).unwrap(),
        r#"{"server":{"time":"1m0s"}}"#
    );
}

#[test]
fn unknown_field_is_an_error_naming_it() {
    let err = Policy::from_yaml("server:\n  maxConectionAge: 1m\n").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("maxConectionAge"), "{msg}");
    assert!(msg.starts_with("server"), "{msg}");

    let err = Policy::from_yaml("serverr: {}\n").unwrap_err();
    assert!(err.to_string().contains("serverr"), "{err}");
}

#[test]
fn unparsable_duration_names_the_field() {
    let err = Policy::from_yaml("drain:\n  timeout: 30 seconds\n").unwrap_err();
    match &err {
        PolicyError::Parse { field, message } => {
            assert_eq!(field, "drain.timeout");
            assert!(message.contains("30 seconds"), "{message}");
            // Named once, not again at the start of the message.
            assert!(!message.starts_with("drain.timeout"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let err = Policy::from_yaml("server:\n  time: 30\n").unwrap_err();
    assert!(err.to_string().starts_with("server.time:"), "{err}");
    let err = Policy::from_json(r#"{"enforcement":{"permitWithoutStream":"yes"}}"#).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("enforcement.permitWithoutStream:"),
        "{err}"
    );
}

#[test]
fn negative_and_zero_values_are_rejected_by_field() {
    assert_eq!(
        field_errors("server:\n  timeout: -1s\n", Strictness::Permissive),
        ["server.timeout"]
    );
    assert_eq!(
        field_errors("server:\n  time: 0s\n", Strictness::Permissive),
        ["server.time"]
    );
    assert_eq!(
        field_errors(
            "enforcement:\n  minTime: 0s\nupstream:\n  time: -5s\n",
            Strictness::Permissive
        ),
        ["enforcement.minTime", "upstream.time"]
    );
    assert_eq!(
        field_errors(
            "server:\n  maxConnectionIdle: 0s\n  maxConnectionAge: -1m\n",
            Strictness::Permissive
        ),
        ["server.maxConnectionIdle", "server.maxConnectionAge"]
    );
    // Zero is meaningful for these two.
    Policy::load(
        "drain:\n  delay: 0s\nserver:\n  maxConnectionAge: 1m\n  maxConnectionAgeGrace: 0s\n",
        Strictness::Production,
    )
    .unwrap();
    let err = Policy::load("drain:\n  delay: -1s\n", Strictness::Permissive).unwrap_err();
    assert_eq!(
        err.to_string(),
        "drain.delay: must not be negative (got -1s)"
    );
}

#[test]
fn an_ack_timeout_the_user_set_must_be_below_drain_timeout() {
    let err = Policy::load(
        "drain:\n  timeout: 3s\n  goawayAckTimeout: 3s\n",
        Strictness::Permissive,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("drain.goawayAckTimeout: must be less than drain.timeout (3s)"),
        "{msg}"
    );
    Policy::load(
        "drain:\n  timeout: 3s\n  goawayAckTimeout: 1s\n",
        Strictness::Permissive,
    )
    .unwrap();
}

#[test]
fn the_default_ack_timeout_follows_a_short_drain_timeout() {
    // Only drain.timeout set, shorter than twice the 5s default: valid,
    // and the ack timeout is half of it.
    let (p, _) = Policy::load("drain:\n  timeout: 3s\n", Strictness::Production).unwrap();
    assert_eq!(
        p.drain_params().goaway_ack_timeout,
        Duration::from_millis(1500)
    );
    let (p, _) = Policy::load("drain:\n  timeout: 1m\n", Strictness::Production).unwrap();
    assert_eq!(p.drain_params().goaway_ack_timeout, Duration::from_secs(5));
    assert_eq!(
        Policy::default().drain_params().goaway_ack_timeout,
        Duration::from_secs(5)
    );
}

#[test]
fn the_quiet_period_is_between_zero_and_a_minute() {
    let quiet = |text: &str| {
        Policy::load(text, Strictness::Production).map(|(p, _)| p.drain_params().quiet_period)
    };
    assert_eq!(quiet("{}").unwrap(), Duration::from_millis(1500));
    assert_eq!(quiet("drain: {quietPeriod: 0s}").unwrap(), Duration::ZERO);
    assert_eq!(
        quiet("drain: {quietPeriod: 1m}").unwrap(),
        Duration::from_secs(60)
    );
    for (text, says) in [
        ("drain: {quietPeriod: 61s}", "at most 1m"),
        ("drain: {quietPeriod: -1s}", "negative"),
    ] {
        let e = quiet(text).unwrap_err().to_string();
        assert!(
            e.starts_with("drain.quietPeriod:") && e.contains(says),
            "{e}"
        );
    }
}

#[test]
fn the_rebalance_window_is_positive_and_at_most_ten_minutes() {
    let window = |text: &str| {
        Policy::load(text, Strictness::Production).map(|(p, _)| p.rebalance_params().window)
    };
    assert_eq!(
        window("rebalance: {enabled: true}").unwrap(),
        Duration::from_secs(30)
    );
    assert_eq!(
        window("rebalance: {enabled: true, window: 10m}").unwrap(),
        Duration::from_secs(600)
    );
    assert_eq!(
        window("rebalance: {enabled: true, window: 1ms}").unwrap(),
        Duration::from_millis(1)
    );
    for (text, says) in [
        ("rebalance: {window: 10m1s}", "at most 10m"),
        ("rebalance: {window: 0s}", "greater than zero"),
        ("rebalance: {window: -1s}", "negative"),
    ] {
        let e = window(text).unwrap_err().to_string();
        assert!(
            e.starts_with("rebalance.window:") && e.contains(says),
            "{e}"
        );
    }
}

#[test]
fn the_rebalance_share_is_a_percentage_from_one_to_a_hundred() {
    let percent = |text: &str| {
        Policy::load(text, Strictness::Production).map(|(p, _)| p.rebalance_params().max_percent)
    };
    assert_eq!(percent("rebalance: {enabled: true}").unwrap(), 50);
    assert_eq!(
        percent("rebalance: {enabled: true, maxPercent: 1}").unwrap(),
        1
    );
    assert_eq!(
        percent("rebalance: {enabled: true, maxPercent: 100}").unwrap(),
        100
    );
    for text in ["rebalance: {maxPercent: 0}", "rebalance: {maxPercent: 101}"] {
        assert_eq!(
            field_errors(text, Strictness::Permissive),
            ["rebalance.maxPercent"],
            "{text}"
        );
    }
    let e = percent("rebalance: {maxPercent: 0}")
        .unwrap_err()
        .to_string();
    assert_eq!(e, "rebalance.maxPercent: must be between 1 and 100 (got 0)");
    // Not a whole non-negative number: a parse error naming the field.
    for text in [
        "rebalance: {maxPercent: -5}",
        "rebalance: {maxPercent: 12.5}",
    ] {
        let e = Policy::from_yaml(text).unwrap_err().to_string();
        assert!(e.starts_with("rebalance.maxPercent:"), "{e}");
    }
    let e = Policy::from_yaml("rebalance: {enabled: yes please}")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("rebalance.enabled:"), "{e}");
}

#[test]
fn grpc_minimums_warn_in_files_and_fail_in_production() {
    let text = "server:\n  time: 100ms\nupstream:\n  time: 2s\n";
    let (_, warnings) = Policy::load(text, Strictness::Permissive).unwrap();
    let fields: Vec<_> = warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(fields, ["server.time", "upstream.time"]);
    assert!(
        warnings[0].message.contains("below gRPC's minimum of 1s"),
        "{}",
        warnings[0]
    );
    assert_eq!(
        field_errors(text, Strictness::Production),
        ["server.time", "upstream.time"]
    );
    // Exactly the minimum is fine.
    Policy::load(
        "server:\n  time: 1s\nupstream:\n  time: 10s\n",
        Strictness::Production,
    )
    .unwrap();
}

#[test]
fn settings_without_effect_warn() {
    let (_, w) = Policy::load(
        "server:\n  maxConnectionAgeGrace: 10s\n",
        Strictness::Production,
    )
    .unwrap();
    assert_eq!(w[0].field, "server.maxConnectionAgeGrace");
    let (_, w) = Policy::load("upstream:\n  timeout: 10s\n", Strictness::Production).unwrap();
    assert_eq!(w[0].field, "upstream.time");
    let (_, w) = Policy::load("rebalance:\n  window: 1m\n", Strictness::Production).unwrap();
    assert_eq!(w[0].field, "rebalance.enabled");
    let (_, w) = Policy::load(
        "rebalance:\n  enabled: true\n  window: 1m\n",
        Strictness::Production,
    )
    .unwrap();
    assert!(w.is_empty(), "{w:?}");
}

#[test]
fn effective_policy_shows_defaults_and_infinity() {
    let p = Policy::from_yaml("server:\n  maxConnectionAge: 30m\n").unwrap();
    let v = serde_json::to_value(p.effective()).unwrap();
    assert_eq!(v["server"]["time"], "2h0m0s");
    assert_eq!(v["server"]["maxConnectionAge"], "30m0s");
    assert_eq!(v["server"]["maxConnectionIdle"], "infinite");
    assert_eq!(v["enforcement"]["minTime"], "5m0s");
    assert_eq!(v["upstream"]["time"], "off");
    assert_eq!(v["drain"]["goawayAckTimeout"], "5s");
    assert_eq!(v["rebalance"]["enabled"], false);
    assert_eq!(v["rebalance"]["window"], "30s");
    assert_eq!(v["rebalance"]["maxPercent"], 50);
}
