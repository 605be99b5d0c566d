//! The simulator's trace CSV: parses or fails naming the line and column, never a panic; a
//! parsed trace keeps its documented shape (every proxy has points, in time order, within the end).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidecar_governor::simulate::parse_trace;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(trace) = parse_trace(&text) {
        for proxy in &trace.proxies {
            assert!(!proxy.points.is_empty());
            assert!(proxy.points.windows(2).all(|w| w[0].at_us <= w[1].at_us));
            assert!(proxy.start_us() <= trace.end_us);
            assert!(
                proxy
                    .points
                    .iter()
                    .all(|p| p.unreclaimable_bytes <= p.memory_bytes)
            );
        }
    }
});
