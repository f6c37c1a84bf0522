//! The client event parser (`corecast_gateway::events::parse_event`), on the JSON data of an
//! EVENT packet as a client sends it (parsed in place by simd-json).
//!
//! Invariants, beyond not panicking: an accepted `sendMessage` obeys every limit (non-blank
//! text within the character limit, attachments counted, http(s) URLs within the length
//! limit, allowed types, `clientMsgId` length); when serde_json reads the same input, it sees
//! the same event name and text; and every refusal is a message that the error encoders turn
//! into valid JSON with a stable code.
#![no_main]

use corecast_gateway::config::LimitsConfig;
use corecast_gateway::events::{parse_event, Command, EventError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Small limits, so that inputs reach them.
    let limits = LimitsConfig {
        rate_limit_per_min: 0,
        max_text_chars: 16,
        max_attachments: 2,
        attachment_types: vec!["image".into(), "file".into()],
        max_url_len: 48,
        max_client_msg_id_len: 8,
        max_group_id_bytes: 8,
        ..LimitsConfig::default()
    };
    let mut buf = data.to_vec();
    match parse_event(&mut buf, &limits) {
        Ok(cmd) => {
            let other: Option<serde_json::Value> = serde_json::from_slice(data).ok();
            if let Some(v) = &other {
                assert_eq!(
                    v[0].as_str(),
                    Some(cmd.event_name()),
                    "simd-json and serde_json disagree"
                );
            }
            if let Command::SendMessage {
                text,
                attachments,
                client_msg_id,
                ..
            } = &cmd
            {
                assert!(!text.trim().is_empty());
                assert!(text.chars().count() <= limits.max_text_chars);
                assert!(attachments.len() <= limits.max_attachments);
                for a in attachments {
                    assert!(a.url.starts_with("http://") || a.url.starts_with("https://"));
                    assert!(a.url.len() <= limits.max_url_len);
                    assert!(!a.url.chars().any(|c| c.is_whitespace() || c.is_control()));
                    assert!(limits.attachment_types.contains(&a.kind));
                }
                if let Some(id) = client_msg_id {
                    assert!(!id.is_empty() && id.len() <= limits.max_client_msg_id_len);
                }
                if let Some(v) = &other {
                    assert_eq!(v[1]["text"].as_str(), Some(text.as_str()), "text differs");
                }
            }
        }
        // Undecodable: the connection is closed, nothing to encode.
        Err(EventError::Undecodable(m)) => assert!(!m.is_empty()),
        Err(EventError::Rejected(e)) => {
            assert!(!e.message.is_empty());
            for json in [e.to_json(), e.to_ack_json()] {
                let v: serde_json::Value =
                    serde_json::from_slice(&json).expect("error JSON is valid");
                let code = v["code"].as_str().or(v["error"]["code"].as_str());
                assert_eq!(code, Some(e.code.as_str()));
            }
        }
    }
});
