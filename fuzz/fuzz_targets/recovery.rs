//! Connection state recovery's parsing of what a reconnecting client sends in its CONNECT:
//! the `pid` (`corecast_gateway::recovery::PidKey::verify`) and the offset
//! (`Recovery::resume`, which reads it as a position).
//!
//! Input: the text up to the first newline is the pid, the rest the offset (absent when there
//! is no newline). Checked beyond "no panic":
//! - a pid the fuzzer wrote never verifies (it cannot compute the MAC), for any user;
//! - with a pid minted here, an offset is accepted or not, never a panic; an accepted one
//!   re-encodes (`Recovery::offset`) to text that is accepted again and resumes every group
//!   after the same id.
#![no_main]

use corecast_gateway::recovery::{PidKey, Recovery};
use corecast_storage::{GroupId, UserId};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_800_000_000_000;
const DAY: u64 = 86_400_000;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pid, offset) = match text.split_once('\n') {
        Some((p, o)) => (p, Some(o)),
        None => (text, None),
    };
    let key = PidKey::new(b"fuzz key");
    for user in [0, 1, u64::MAX] {
        assert_eq!(
            key.verify(pid, UserId(user)),
            None,
            "a forged pid verified: {pid:?}"
        );
    }
    let good = key.mint(UserId(7), NOW - 1_000);
    let Some(r) = Recovery::resume(&key, UserId(7), &good, offset, NOW, 100 * 365 * DAY) else {
        return;
    };
    let again = r.offset();
    let r2 = Recovery::resume(&key, UserId(7), &good, Some(&again), NOW, 100 * 365 * DAY)
        .unwrap_or_else(|| panic!("its own offset refused: {again:?} (from {offset:?})"));
    for g in ["a", "g-1", "team"] {
        let g = GroupId::new(g);
        assert_eq!(r.after(&g), r2.after(&g), "{offset:?} -> {again:?}");
    }
});
