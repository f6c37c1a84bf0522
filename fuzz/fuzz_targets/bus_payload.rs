//! The cluster bus's decoding (`corecast_gateway::cluster::BusMessage::decode`): what a node
//! reads from Redis pub/sub, where anything with access to Redis can publish. It reaches every
//! bus decoder: the group message (`M`), presence news (`corecast_cluster::presence::
//! parse_news` and the announced groups' JSON), node words (`J`, `X`), membership changes
//! (`C`), and on this node's channel the forward's JSON (`S`), the asks (`Q`, `R`), their
//! answers (`W`, `L`), the applied word (`D`) and the answer (`A`, for one of 4 shards here).
//!
//! Input: the first byte picks the mode.
//! - Below 128, decode: `byte % 6` picks the channel (`g:<name>`, `presence`, `members`,
//!   `n:<this node>`, `n:<name>`, or `<name>` as the whole channel); the second byte is the
//!   length of the name (ignored for channels without one), read from what follows (lossy
//!   UTF-8); the rest is the payload.
//!   Checked beyond "no panic": a channel outside corecast's prefix, or of no kind, is
//!   refused; another node's `n:` channel is never read; a decoded message re-encoded by its
//!   encoder goes on the same channel and decodes to the same message (an answer's shard is
//!   then one of this node's).
//! - From 128, encode: `byte % 11` picks a kind whose fields the rest chooses (`arbitrary`);
//!   the message's encoder's bytes, on its channel, decode to exactly those fields. Node ids are
//!   kept within the 255 bytes that `put_short` keeps (the config allows 64) and an answer's
//!   group within its 16-bit length (group ids are at most 1,024 bytes).
#![no_main]

use bytes::Bytes;
use corecast_gateway::cluster::{
    applied_word, group_channel, groups_json, members_channel, node_channel, node_word, Answer,
    BusMessage, Forward, Forwarded, GroupMessage, GroupMessageIn, Members, SettledAnswer,
    SettledAsk, PREFIX,
};
use corecast_gateway::conn::ConnId;
use corecast_ids::ShardId;
use corecast_storage::{Attachment, GroupId, MessageId, UserId};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

/// This node.
const ME: &str = "node-me";
/// Its shards.
const NR_SHARDS: usize = 4;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode < 128 {
        decode_any(mode % 6, rest);
    } else {
        let mut u = Unstructured::new(rest);
        if let Ok(msg) = message((mode - 128) % 11, &mut u) {
            let (channel, payload) =
                encode(&msg).expect("invariant: every kind made has a channel");
            let back = BusMessage::decode(&channel, payload.clone(), ME, NR_SHARDS);
            assert_eq!(back.as_ref(), Some(&msg), "{channel:?} {payload:?}");
        }
    }
});

/// Decodes `rest` on the channel `kind` picks, and checks what came out (see the top).
fn decode_any(kind: u8, rest: &[u8]) {
    let Some((&n, rest)) = rest.split_first() else {
        return;
    };
    let named = matches!(kind, 0 | 4 | 5);
    let (name, payload) = rest.split_at(if named {
        (n as usize).min(rest.len())
    } else {
        0
    });
    let name = String::from_utf8_lossy(name).into_owned();
    let channel = match kind {
        0 => group_channel(&GroupId::new(name)),
        1 => format!("{PREFIX}presence"),
        2 => members_channel(),
        3 => node_channel(ME),
        4 => node_channel(&name),
        _ => name,
    };
    let payload = Bytes::copy_from_slice(payload);
    let msg = BusMessage::decode(&channel, payload.clone(), ME, NR_SHARDS);
    let Some(name) = channel.strip_prefix(PREFIX) else {
        assert_eq!(msg, None, "outside the prefix: {channel:?}");
        return;
    };
    let known = name.starts_with("g:") || name.starts_with("n:");
    if !known && name != "presence" && name != "members" {
        assert_eq!(msg, None, "no such channel: {channel:?}");
        return;
    }
    if let Some(node) = name.strip_prefix("n:") {
        if node != ME {
            assert_eq!(msg, Some(BusMessage::NotMine), "{channel:?} read");
            return;
        }
    }
    let Some(msg) = msg else {
        return;
    };
    if let BusMessage::Answer(a) = &msg {
        assert!(a.shard.index() < NR_SHARDS, "{a:?}");
    }
    let (again, bytes) = encode(&msg).expect("invariant: only NotMine has no encoding");
    assert_eq!(again, channel, "{msg:?} came on another kind's channel");
    let back = BusMessage::decode(&again, bytes.clone(), ME, NR_SHARDS);
    assert_eq!(
        back.as_ref(),
        Some(&msg),
        "{payload:?} re-encoded as {bytes:?}"
    );
}

/// The channel and bytes the nodes publish `msg` as, with the encoders they use; `None` for
/// [`BusMessage::NotMine`], which is no message.
fn encode(msg: &BusMessage) -> Option<(String, Bytes)> {
    let me = node_channel(ME);
    Some(match msg {
        BusMessage::Group { group, message } => {
            let m = GroupMessage {
                from: &message.from,
                id: message.id,
                frame: message.frame.clone(),
            };
            (group_channel(group), m.encode())
        }
        BusMessage::Presence {
            user,
            online,
            announce,
        } => {
            // As the scripts of corecast_cluster::presence publish them.
            let sign = match (online, announce.is_some()) {
                (true, true) => '+',
                (false, true) => '-',
                (true, false) => '>',
                (false, false) => '<',
            };
            let mut payload = format!("{sign}{}\n", user.0).into_bytes();
            if let Some(groups) = announce {
                payload.extend_from_slice(&groups_json(groups));
            }
            (format!("{PREFIX}presence"), payload.into())
        }
        BusMessage::NodeWord { live, node, info } => {
            let word = if *live { b'J' } else { b'X' };
            (members_channel(), node_word(word, node, info))
        }
        BusMessage::Members { from, change } => (members_channel(), change.encode(from)),
        BusMessage::NotMine => return None,
        BusMessage::Forward(f) => (me, f.encode()),
        BusMessage::SettledAsked { from, group } => (me, SettledAsk { from, group }.encode()),
        BusMessage::ReleaseAsked { from, group } => {
            (me, SettledAsk { from, group }.encode_release())
        }
        BusMessage::GapSettled { group, settled } => {
            let a = SettledAnswer {
                group: group.clone(),
                settled: *settled,
            };
            (me, a.encode())
        }
        BusMessage::Released { group, settled } => {
            let a = SettledAnswer {
                group: group.clone(),
                settled: *settled,
            };
            (me, a.encode_released())
        }
        BusMessage::Applied { req } => (me, applied_word(*req)),
        BusMessage::Answer(a) => (me, a.encode()),
    })
}

/// A message of kind `kind` with fields the fuzzer chooses, within what the encoding keeps.
fn message(kind: u8, u: &mut Unstructured) -> Result<BusMessage> {
    Ok(match kind {
        0 => BusMessage::Group {
            group: GroupId::new(u.arbitrary::<String>()?),
            message: GroupMessageIn {
                from: node_id(u)?,
                id: MessageId(u.arbitrary()?),
                frame: Bytes::from(u.arbitrary::<Vec<u8>>()?),
            },
        },
        1 => BusMessage::Presence {
            user: UserId(u.arbitrary()?),
            online: u.arbitrary()?,
            announce: if u.arbitrary()? {
                let groups: Vec<String> = u.arbitrary()?;
                Some(groups.into_iter().map(GroupId::new).collect::<Arc<[_]>>())
            } else {
                None
            },
        },
        2 => BusMessage::NodeWord {
            live: u.arbitrary()?,
            node: node_id(u)?,
            info: u.arbitrary()?,
        },
        3 => BusMessage::Members {
            from: node_id(u)?,
            change: Members {
                group: u.arbitrary()?,
                added: users(u)?,
                removed: users(u)?,
                req: u.arbitrary()?,
            },
        },
        4 => BusMessage::Forward(Forward {
            group: u.arbitrary()?,
            user: u.arbitrary()?,
            event: if u.arbitrary()? {
                let mut attachments = Vec::new();
                for _ in 0..u.int_in_range(0..=3u8)? {
                    attachments.push(Attachment {
                        url: u.arbitrary()?,
                        kind: u.arbitrary()?,
                    });
                }
                Forwarded::SendMessage {
                    text: u.arbitrary()?,
                    attachments,
                    client_msg_id: u.arbitrary()?,
                }
            } else {
                Forwarded::MarkRead {
                    message: u.arbitrary()?,
                }
            },
            node: u.arbitrary()?,
            shard: u.arbitrary()?,
            conn: u.arbitrary()?,
            ack: u.arbitrary()?,
        }),
        5 => BusMessage::SettledAsked {
            from: node_id(u)?,
            group: GroupId::new(u.arbitrary::<String>()?),
        },
        6 => BusMessage::ReleaseAsked {
            from: node_id(u)?,
            group: GroupId::new(u.arbitrary::<String>()?),
        },
        7 => BusMessage::GapSettled {
            group: GroupId::new(u.arbitrary::<String>()?),
            settled: MessageId(u.arbitrary()?),
        },
        8 => BusMessage::Released {
            group: GroupId::new(u.arbitrary::<String>()?),
            settled: MessageId(u.arbitrary()?),
        },
        9 => BusMessage::Applied {
            req: u.arbitrary()?,
        },
        _ => BusMessage::Answer(Answer {
            group: GroupId::new(cut(u.arbitrary()?, u16::MAX as usize)),
            shard: ShardId(u.int_in_range(0..=NR_SHARDS as u16 - 1)?),
            conn: ConnId(u.arbitrary()?),
            ack: u.arbitrary()?,
            frame: Bytes::from(u.arbitrary::<Vec<u8>>()?),
        }),
    })
}

/// A node id the encoding keeps whole: `put_short` keeps 255 bytes.
fn node_id(u: &mut Unstructured) -> Result<String> {
    Ok(cut(u.arbitrary()?, 255))
}

fn users(u: &mut Unstructured) -> Result<Vec<UserId>> {
    let users: Vec<u64> = u.arbitrary()?;
    Ok(users.into_iter().map(UserId).collect())
}

/// `s` cut to at most `max` bytes, at a character's boundary.
fn cut(mut s: String, max: usize) -> String {
    let mut at = s.len().min(max);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    s.truncate(at);
    s
}
