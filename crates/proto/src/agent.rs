//! Agent ↔ broker messages and their framing.
//!
//! A link carries frames: a 4-byte big-endian length, then that many bytes of one JSON message.
//! A frame longer than [`MAX_FRAME`] is refused from its length header, before anything is
//! allocated for it, and the link is closed with that reason. The first message each way is the
//! hello ([`AgentMessage::Hello`], [`BrokerMessage::Welcome`]).
//!
//! # How the protocol grows
//! - A broker accepts agents of its [`PROTOCOL_VERSION`] and of the one before
//!   ([`OLDEST_PROTOCOL_VERSION`]), so brokers are upgraded first and agents follow host by host;
//!   the welcome says which version the link speaks (the agent's own). A version outside that
//!   range is refused with a reason.
//! - The hello lists the agent's capabilities: the commands it carries out (the `action` name of
//!   each [`Action`] it implements), and any later optional behaviour by name. An agent of
//!   version 1 lists none and has [`V1_CAPABILITIES`]. The broker sends a command only to an
//!   agent that announced it (otherwise the command fails at once, naming the host and what it
//!   lacks), so a new command never reaches an agent that would refuse it.
//! - New agent-to-broker data travels as optional fields where it can: unknown fields are
//!   ignored, so adding one needs no new version. A message type a peer does not know decodes
//!   as `Unknown` and is ignored (and counted) rather than ending the link.
//!
//! Messages are serde enums tagged by `type`, so the format is plain JSON that non-Rust agents can
//! speak too.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use switchboard_core::model::{LoadReport, ReportedSession};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Version of this protocol; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest version a broker of this version still accepts from agents.
pub const OLDEST_PROTOCOL_VERSION: u32 = PROTOCOL_VERSION - 1;

/// What an agent of protocol version 1 can do (it announces nothing): the commands of that
/// release.
pub const V1_CAPABILITIES: &[&str] = &[
    "terminate",
    "kill",
    "disconnect",
    "logoff",
    "add_key",
    "remove_key",
];

/// What an agent of this version announces.
pub const CAPABILITIES: &[&str] = V1_CAPABILITIES;

/// Whether a broker of this version accepts an agent speaking `version`.
pub fn accepts(version: u32) -> bool {
    (OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version)
}
/// Largest frame either side accepts (1 MiB).
pub const MAX_FRAME: usize = 1 << 20;

/// A secret string: serialised as is, shown as `***` by `Debug`, so logging a message never
/// logs a credential.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// What an agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// First message: who the agent is and how often it reports.
    Hello {
        /// The agent's [`PROTOCOL_VERSION`].
        version: u32,
        /// The host's name as the agent knows it.
        host: String,
        /// How often load reports will come, in milliseconds.
        report_interval_ms: u64,
        /// The agent's software version, for operators.
        agent_version: String,
        /// The host's credential, as `switchboard ctl enroll` or the API printed it. The broker
        /// keeps only its SHA-256 and never logs it.
        credential: Secret,
        /// What the agent can do (from version 2; absent means [`V1_CAPABILITIES`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        capabilities: Option<Vec<String>>,
    },
    /// A load report.
    Load(LoadReport),
    /// Every session on the host (sent after the hello, and whenever the agent resynchronises).
    Inventory {
        /// The sessions.
        sessions: Vec<ReportedSession>,
    },
    /// One session appeared or changed state.
    SessionChanged(ReportedSession),
    /// One session is gone.
    SessionGone {
        /// The backend's id for it.
        backend_id: String,
    },
    /// The outcome of a broker command.
    CommandResult {
        /// The command's id.
        id: u64,
        /// Whether it was carried out.
        ok: bool,
        /// What happened, for logs and the audit.
        message: String,
    },
    /// Still here (sent when nothing else was sent for a while).
    Heartbeat,
    /// A message type of a newer agent: ignored.
    #[serde(other)]
    Unknown,
}

/// What the broker sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BrokerMessage {
    /// Answer to the hello: the link is accepted.
    Welcome {
        /// The version the link speaks: the agent's own, when the broker accepts it.
        version: u32,
        /// How often the broker expects to hear from the agent, in milliseconds.
        heartbeat_ms: u64,
    },
    /// The link is refused (bad credential, unknown host, other version); the broker closes it.
    Refused {
        /// Why.
        reason: String,
    },
    /// Do something to a session or user.
    Command {
        /// Correlates the [`AgentMessage::CommandResult`].
        id: u64,
        /// What to do.
        action: Action,
    },
    /// Still here.
    Heartbeat,
    /// A message type of a newer broker: ignored.
    #[serde(other)]
    Unknown,
}

/// A command for an agent. Agents refuse commands for sessions or users they do not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Graceful end of a session.
    Terminate {
        /// The backend's id for the session.
        backend_id: String,
    },
    /// Immediate end of a session.
    Kill {
        /// The backend's id for the session.
        backend_id: String,
    },
    /// Detach the client, keep the session.
    Disconnect {
        /// The backend's id for the session.
        backend_id: String,
    },
    /// Terminate, then kill after the grace period.
    Logoff {
        /// The backend's id for the session.
        backend_id: String,
        /// Milliseconds between terminate and kill.
        grace_ms: u64,
    },
    /// Add a public key line to a user's X2Go authorized-keys file, valid until `expires_at_ms`
    /// (for the X2Go frontend's autologin). The agent removes expired lines.
    AddKey {
        /// The user whose file it is.
        user: String,
        /// One OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
        key: String,
        /// Milliseconds since the epoch after which the line is removed.
        expires_at_ms: u64,
    },
    /// Remove a public key line added by [`Action::AddKey`].
    RemoveKey {
        /// The user whose file it is.
        user: String,
        /// The key line as it was added.
        key: String,
    },
}

impl Action {
    /// The capability an agent must have announced for this command: its `action` name.
    pub fn capability(&self) -> &'static str {
        match self {
            Action::Terminate { .. } => "terminate",
            Action::Kill { .. } => "kill",
            Action::Disconnect { .. } => "disconnect",
            Action::Logoff { .. } => "logoff",
            Action::AddKey { .. } => "add_key",
            Action::RemoveKey { .. } => "remove_key",
        }
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed, or a length header announced more than [`MAX_FRAME`].
    #[error("link error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame that is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Frames messages of type `In` in and `Out` out (an agent uses `Codec<BrokerMessage,
/// AgentMessage>`, the broker the reverse).
#[derive(Debug)]
pub struct Codec<In, Out> {
    frames: LengthDelimitedCodec,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> Default for Codec<In, Out> {
    fn default() -> Self {
        Codec {
            frames: LengthDelimitedCodec::builder()
                .max_frame_length(MAX_FRAME)
                .length_field_length(4)
                .new_codec(),
            _types: PhantomData,
        }
    }
}

impl<In, Out> Codec<In, Out> {
    /// Lowers (or restores) the largest frame accepted, e.g. to [`MAX_HELLO`] until a peer has
    /// authenticated. Never above [`MAX_FRAME`].
    pub fn set_max_frame(&mut self, n: usize) {
        self.frames.set_max_frame_length(n.min(MAX_FRAME));
    }
}

/// Largest first frame (the hello) a broker accepts from a peer that has not authenticated.
pub const MAX_HELLO: usize = 16 * 1024;

impl<In: for<'de> Deserialize<'de>, Out> Decoder for Codec<In, Out> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        match self.frames.decode(src)? {
            Some(frame) => Ok(Some(serde_json::from_slice(&frame)?)),
            None => Ok(None),
        }
    }
}

impl<In, Out: Serialize> Encoder<Out> for Codec<In, Out> {
    type Error = FrameError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        let json = serde_json::to_vec(&item)?;
        self.frames.encode(Bytes::from(json), dst)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use switchboard_core::model::ReportedState;

    type BrokerSide = Codec<AgentMessage, BrokerMessage>;
    type AgentSide = Codec<BrokerMessage, AgentMessage>;

    fn through_the_wire(m: AgentMessage) -> AgentMessage {
        let mut buf = BytesMut::new();
        AgentSide::default().encode(m, &mut buf).unwrap();
        BrokerSide::default().decode(&mut buf).unwrap().unwrap()
    }

    #[test]
    fn every_agent_message_survives_the_wire() {
        let msgs = vec![
            AgentMessage::Hello {
                version: PROTOCOL_VERSION,
                host: "x2go1".into(),
                report_interval_ms: 3000,
                agent_version: "0.1.0".into(),
                credential: Secret("sb1_secret".into()),
                capabilities: Some(vec!["terminate".into()]),
            },
            AgentMessage::Load(LoadReport {
                load_avg: [0.5, 0.4, 0.3],
                cpu_count: 8,
                ..LoadReport::default()
            }),
            AgentMessage::Inventory {
                sessions: vec![ReportedSession {
                    backend_id: "alice-50-1763771234_stDXFCE_dp24".into(),
                    user: "alice".into(),
                    state: ReportedState::Disconnected,
                    idle_secs: Some(120),
                    info: None,
                }],
            },
            AgentMessage::SessionGone {
                backend_id: "b".into(),
            },
            AgentMessage::CommandResult {
                id: 7,
                ok: false,
                message: "no such session".into(),
            },
            AgentMessage::Heartbeat,
        ];
        for m in msgs {
            assert_eq!(through_the_wire(m.clone()), m);
        }
    }

    #[test]
    fn the_format_is_plain_tagged_json() {
        let json = serde_json::to_string(&BrokerMessage::Command {
            id: 3,
            action: Action::Logoff {
                backend_id: "s1".into(),
                grace_ms: 60_000,
            },
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"type":"command","id":3,"action":{"action":"logoff","backend_id":"s1","grace_ms":60000}}"#
        );
    }

    #[test]
    fn a_frame_over_one_mebibyte_is_refused_from_its_header() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&((MAX_FRAME as u32) + 1).to_be_bytes());
        buf.extend_from_slice(b"{}");
        let e = BrokerSide::default().decode(&mut buf).unwrap_err();
        assert!(matches!(e, FrameError::Io(_)), "{e}");
    }

    #[test]
    fn partial_frames_wait_for_the_rest() {
        let mut full = BytesMut::new();
        AgentSide::default()
            .encode(AgentMessage::Heartbeat, &mut full)
            .unwrap();
        let mut codec = BrokerSide::default();
        let mut buf = BytesMut::from(&full[..full.len() - 1]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&full[full.len() - 1..]);
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(AgentMessage::Heartbeat)
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        for body in [&b"not json"[..], br#"{"type":"load"}"#, br#"{"no":"type"}"#] {
            let mut buf = BytesMut::new();
            buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
            buf.extend_from_slice(body);
            let e = BrokerSide::default().decode(&mut buf).unwrap_err();
            assert!(matches!(e, FrameError::Malformed(_)), "{e}");
        }
    }

    #[test]
    fn message_types_of_a_newer_peer_decode_as_unknown() {
        let body = br#"{"type":"launch_missiles","at":"dawn"}"#;
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
        buf.extend_from_slice(body);
        assert_eq!(
            BrokerSide::default().decode(&mut buf).unwrap(),
            Some(AgentMessage::Unknown)
        );
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
        buf.extend_from_slice(body);
        assert_eq!(
            AgentSide::default().decode(&mut buf).unwrap(),
            Some(BrokerMessage::Unknown)
        );
    }

    #[test]
    fn a_version_1_hello_decodes_without_capabilities() {
        // Byte for byte what an agent of the previous release sends.
        let body = br#"{"type":"hello","version":1,"host":"x2go1","report_interval_ms":3000,"agent_version":"0.1.0","credential":"sba_x"}"#;
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
        buf.extend_from_slice(body);
        let Some(AgentMessage::Hello {
            version,
            capabilities,
            ..
        }) = BrokerSide::default().decode(&mut buf).unwrap()
        else {
            panic!("not a hello");
        };
        assert_eq!((version, capabilities), (1, None));
        assert!(accepts(1) && accepts(PROTOCOL_VERSION));
        assert!(!accepts(0) && !accepts(PROTOCOL_VERSION + 1));
    }

    #[test]
    fn every_command_names_the_capability_it_needs() {
        let all = [
            Action::Terminate {
                backend_id: "s".into(),
            },
            Action::Kill {
                backend_id: "s".into(),
            },
            Action::Disconnect {
                backend_id: "s".into(),
            },
            Action::Logoff {
                backend_id: "s".into(),
                grace_ms: 1,
            },
            Action::AddKey {
                user: "u".into(),
                key: "k".into(),
                expires_at_ms: 1,
            },
            Action::RemoveKey {
                user: "u".into(),
                key: "k".into(),
            },
        ];
        for a in all {
            // The capability is the command's own wire name.
            let json = serde_json::to_value(&a).unwrap();
            assert_eq!(json["action"], a.capability());
            assert!(V1_CAPABILITIES.contains(&a.capability()));
        }
    }

    #[test]
    fn unknown_fields_are_ignored_for_forward_compatibility() {
        let body = br#"{"type":"heartbeat","added_in_a_later_minor":1}"#;
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
        buf.extend_from_slice(body);
        assert_eq!(
            BrokerSide::default().decode(&mut buf).unwrap(),
            Some(AgentMessage::Heartbeat)
        );
    }

    #[test]
    fn credentials_never_show_in_debug_output() {
        let hello = AgentMessage::Hello {
            version: PROTOCOL_VERSION,
            host: "x2go1".into(),
            report_interval_ms: 3000,
            agent_version: "0.1.0".into(),
            credential: Secret("sb1_topsecret".into()),
            capabilities: None,
        };
        let shown = format!("{hello:?}");
        assert!(!shown.contains("topsecret"), "{shown}");
        let json = serde_json::to_string(&hello).unwrap();
        assert!(json.contains(r#""credential":"sb1_topsecret""#), "{json}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(data in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
            let mut buf = BytesMut::from(&data[..]);
            let mut codec = BrokerSide::default();
            // Decode until the input is used up or an error ends the link.
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
    }
}
