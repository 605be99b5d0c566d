//! The policy file (a ConfigMap anyone with edit rights can change): parses into a validated
//! policy or field errors, never a panic; a loaded policy's effective bounds keep min <= max.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidecar_governor::policy::{PodControl, Policy};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(policy) = Policy::from_yaml(&text) else {
        return;
    };
    let _ = policy.summary();
    let namespaces = policy
        .overrides
        .iter()
        .map(|o| o.namespace.as_str())
        .chain(["", "default"]);
    for namespace in namespaces {
        let effective = policy.effective(namespace, &PodControl::default());
        assert!(effective.cpu.min_millis <= effective.cpu.max_millis);
    }
});
