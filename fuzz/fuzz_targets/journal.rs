//! The journal loader: whatever bytes sit in `journal.json` (a torn write, a disk error, a hand
//! edit) load as records or fail with an error naming the key, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sidecar_governor::journal::parse_journal;

fuzz_target!(|data: &[u8]| {
    if let Ok((containers, pods)) = parse_journal(Path::new("journal.json"), data) {
        for record in containers.values() {
            let _ = record.touched();
            let _ = record.excess_millis();
        }
        for pod in pods.values() {
            let _ = pod.target(u64::MAX);
            let _ = pod.target(1);
        }
    }
});
