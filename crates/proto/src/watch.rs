//! The broker's pool watch stream, `GET /api/v1/pools/{name}/watch`: server-sent events, each
//! `pool` event's data one [`PoolEvent`] as JSON (the pool's whole view), and the bounded
//! [`SseParser`] that splits the stream into events.
//!
//! The broker serializes [`PoolEvent`] and the director deserializes it, so the two cannot drift
//! apart. Field order is the wire order, and a unit test pins the exact bytes the broker sends. An
//! event larger than [`MAX_EVENT`] bytes is refused.

use serde::{Deserialize, Serialize};

/// Largest event accepted from the broker.
pub const MAX_EVENT: usize = 4 << 20;

/// One host of a pool as the watch stream sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = PoolWatchHost))]
pub struct PoolHost {
    /// Host name.
    pub name: String,
    /// Its address as configured (an IP literal or a name).
    pub address: String,
    /// The port configured for it.
    // Defaulted when absent because the director never required it (it dials the service's own
    // port), and an event it accepted before must still be accepted.
    #[serde(default)]
    pub port: u16,
    /// Weight.
    pub weight: u32,
    /// `online`, `draining` or `offline`.
    pub admin: String,
    /// `up`, `unreachable` or `unknown`.
    pub health: String,
    /// Whether placement would consider it now (and why not otherwise).
    pub excluded: Option<String>,
    /// Live sessions.
    // Defaulted when absent for the same reason as `port`: the director does not read it.
    #[serde(default)]
    pub sessions: u32,
    /// The 1-minute load average its agent last reported, to one decimal.
    pub load_avg: Option<f64>,
}

/// A `pool` event of `GET /api/v1/pools/{name}/watch`: the pool's whole view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = PoolWatchEvent))]
pub struct PoolEvent {
    /// The pool.
    pub pool: String,
    /// Its hosts, in configured order.
    pub hosts: Vec<PoolHost>,
}

/// A server-sent events parser with a size limit: yields (event, data) pairs.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Feeds bytes; returns the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            let text = &self.buf;
            let end = text
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, i + 2));
            let Some((at, next)) = end else {
                // Only an unfinished event is held, so this bounds the memory a peer can pin.
                if self.buf.len() > MAX_EVENT {
                    return Err(format!("event larger than {MAX_EVENT} bytes"));
                }
                return Ok(out);
            };
            let block = String::from_utf8(self.buf[..at].to_vec())
                .map_err(|_| "event is not UTF-8".to_owned())?;
            self.buf.drain(..next);
            let mut event = String::from("message");
            let mut data: Vec<&str> = Vec::new();
            for line in block.lines() {
                let line = line.strip_suffix('\r').unwrap_or(line);
                if line.starts_with(':') {
                    continue;
                }
                let (k, v) = line.split_once(':').unwrap_or((line, ""));
                let v = v.strip_prefix(' ').unwrap_or(v);
                match k {
                    "event" => event = v.to_owned(),
                    "data" => data.push(v),
                    _ => {}
                }
            }
            if !data.is_empty() {
                out.push((event, data.join("\n")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn events_are_split_across_chunks_and_comments_skipped() {
        let mut p = SseParser::default();
        assert!(p.push(b": keepalive\n\nevent: po").unwrap().is_empty());
        let e = p.push(b"ol\ndata: {\"a\":\ndata: 1}\n\n").unwrap();
        assert_eq!(e, vec![("pool".to_owned(), "{\"a\":\n1}".to_owned())]);
        let big = vec![b'x'; MAX_EVENT + 1];
        assert!(p.push(&big).is_err());
    }

    fn sample() -> PoolEvent {
        PoolEvent {
            pool: "desktops".to_owned(),
            hosts: vec![
                PoolHost {
                    name: "h1".to_owned(),
                    address: "10.0.0.1".to_owned(),
                    port: 22,
                    weight: 100,
                    admin: "online".to_owned(),
                    health: "up".to_owned(),
                    excluded: None,
                    sessions: 3,
                    load_avg: Some(0.5),
                },
                PoolHost {
                    name: "h2".to_owned(),
                    address: "h2.example.org".to_owned(),
                    port: 2222,
                    weight: 0,
                    admin: "draining".to_owned(),
                    health: "unreachable".to_owned(),
                    excluded: Some("draining".to_owned()),
                    sessions: 0,
                    load_avg: None,
                },
            ],
        }
    }

    /// The bytes the broker sent before the shape moved here (its `PoolWatchEvent`, field order
    /// as declared there): a change to them breaks directors of the previous release.
    const WIRE: &str = concat!(
        r#"{"pool":"desktops","hosts":["#,
        r#"{"name":"h1","address":"10.0.0.1","port":22,"weight":100,"admin":"online","#,
        r#""health":"up","excluded":null,"sessions":3,"load_avg":0.5},"#,
        r#"{"name":"h2","address":"h2.example.org","port":2222,"weight":0,"admin":"draining","#,
        r#""health":"unreachable","excluded":"draining","sessions":0,"load_avg":null}"#,
        r#"]}"#,
    );

    #[test]
    fn the_wire_bytes_are_pinned() {
        assert_eq!(serde_json::to_string(&sample()).unwrap(), WIRE);
        let back: PoolEvent = serde_json::from_str(WIRE).unwrap();
        assert_eq!(back, sample());
        assert_eq!(serde_json::to_string(&back).unwrap(), WIRE);
    }

    #[test]
    fn an_event_with_only_the_fields_the_director_reads_still_decodes() {
        // What the director's own view type required before the shape moved here.
        let old = r#"{"pool":"p","hosts":[{"name":"h","address":"10.0.0.9","weight":5,"admin":"offline","health":"unknown","extra":1}]}"#;
        let e: PoolEvent = serde_json::from_str(old).unwrap();
        assert_eq!(
            e.hosts,
            vec![PoolHost {
                name: "h".to_owned(),
                address: "10.0.0.9".to_owned(),
                port: 0,
                weight: 5,
                admin: "offline".to_owned(),
                health: "unknown".to_owned(),
                excluded: None,
                sessions: 0,
                load_avg: None,
            }]
        );
    }

    #[test]
    fn pool_events_come_out_of_the_parser() {
        let mut p = SseParser::default();
        let chunk = format!("event: pool\ndata: {WIRE}\n\n");
        let (half, rest) = chunk.as_bytes().split_at(40);
        assert!(p.push(half).unwrap().is_empty());
        let e = p.push(rest).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, "pool");
        assert_eq!(
            serde_json::from_str::<PoolEvent>(&e[0].1).unwrap(),
            sample()
        );
    }
}
