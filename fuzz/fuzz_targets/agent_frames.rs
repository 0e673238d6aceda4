//! The broker's decoder of agent frames must never panic, hang or allocate past its limit,
//! whatever bytes arrive.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard_proto::agent::{AgentMessage, BrokerMessage, Codec};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut codec = Codec::<AgentMessage, BrokerMessage>::default();
    while let Ok(Some(_)) = codec.decode(&mut buf) {}
});
