//! The policy parser never panics on any text, and whatever it accepts
//! (parsed and validated) round-trips: serialised to JSON and YAML and
//! parsed back it is the same policy, and still valid.
#![no_main]

use goaway_transport::Policy;
use goaway_transport::policy::Strictness;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for strictness in [Strictness::Permissive, Strictness::Production] {
        let Ok((policy, _warnings)) = Policy::load(text, strictness) else {
            continue;
        };
        let json = serde_json::to_string(&policy).expect("an accepted policy serialises");
        let back = Policy::from_json(&json).expect("its own JSON parses");
        assert_eq!(back, policy, "JSON round trip changed the policy: {json}");
        back.validate(strictness)
            .expect("the round-tripped policy validates");
        // The agent reads YAML; JSON is YAML, through the YAML path too.
        let (again, _) = Policy::load(&json, strictness).expect("its own JSON loads as YAML");
        assert_eq!(again, policy, "YAML round trip changed the policy: {json}");
    }
});
