//! The userspace data path: accept, choose a backend, connect, relay bytes both ways.
//!
//! Each direction starts by reading into a per-thread buffer and writing on at once, so an idle
//! or interactive connection (an ssh session) holds no buffer of its own. Once a read fills the
//! whole 64 KiB buffer the direction is carrying bulk data, and on Linux it goes over to
//! splice(2) through a pipe: the bytes then move between the two sockets inside the kernel
//! without being copied into this process (HAProxy's `splice-auto` works the same way). The
//! calls are the `nix` crate's safe `splice` and `pipe2` wrappers: no `unsafe` here. Without
//! splice (another OS, `[director] splice = false`, or a kernel that refuses it for a socket)
//! the copy goes on. Either way:
//! - a client's first bytes, when they are there at accept, are read before the backend connect
//!   and leave with the handshake's last ACK (see `connect`);
//! - one `recv` per readiness event: a short read clears the readiness (see `read_once`);
//! - TCP keepalive is set on both legs, and TCP_NODELAY, so interactive protocols (ssh, RDP,
//!   X2Go) see no added Nagle delay;
//! - a half-close is passed on: when one side ends its stream, the other side's write half is
//!   shut down and the other direction keeps flowing until it ends too;
//! - a connection with no bytes either way for the service's `idle_timeout` is closed;
//! - an error on either leg ends both.

use crate::service::{Lease, Service};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The PROXY protocol version 2 header sent ahead of a client's bytes: the wire format is proto's,
/// next to its parser, so the two are tested against each other.
pub use switchboard_proto::proxy::proxy_v2_header;

/// Bytes moved per read or splice.
const CHUNK: usize = 64 * 1024;

/// How many backends one connection tries before it gives up.
const MAX_TRIES: usize = 3;

/// Whether splice may be used (cleared for good when the kernel refuses it).
static SPLICE_WORKS: AtomicBool = AtomicBool::new(true);

/// The backend leg: TCP_NODELAY and keepalive after 60 s idle (the kernel's interval and count
/// after that), three system calls per connection instead of five.
fn tune_backend(sock: &socket2::SockRef<'_>) {
    let _ =
        sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)));
    let _ = sock.set_tcp_nodelay(true);
}

/// TCP keepalive (60 s idle, then every 10 s, 6 probes) and TCP_NODELAY. Set on listeners too:
/// Linux gives accepted sockets their listener's options, which saves system calls per
/// connection.
pub(crate) fn tune(sock: &socket2::SockRef<'_>) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    #[cfg(target_os = "linux")]
    let ka = ka.with_retries(6);
    let _ = sock.set_tcp_keepalive(&ka);
    let _ = sock.set_tcp_nodelay(true);
}

/// Serves one accepted client connection to its end.
pub async fn handle(service: Arc<Service>, client: TcpStream, peer: SocketAddr, splice: bool) {
    // Keepalive and TCP_NODELAY come from the listener (see `tune`).
    let config = service.config();
    // The client's first bytes, when they are here already (under load, a client that speaks
    // first has nearly always sent them by the time it is accepted): they go to the backend with
    // the last packet of the handshake (see `connect`).
    let early = match BUF.with_borrow_mut(|buf| match read_once(&client, buf) {
        Ok(n) => Ok(buf[..n].to_vec()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Vec::new()),
        Err(e) => Err(e),
    }) {
        Ok(early) => early,
        Err(e) => {
            tracing::debug!(service = %service.name, client = %peer, error = %e, "connection ended before it was relayed");
            return;
        }
    };
    let mut tried = Vec::new();
    let (lease, server) = loop {
        let Some(lease) = service.pick(peer, &tried) else {
            tracing::warn!(service = %service.name, client = %peer, "no backend can take the connection; closing it");
            return;
        };
        let addr = lease.backend.addr;
        match tokio::time::timeout(config.connect_timeout, connect(addr, !early.is_empty())).await {
            Ok(Ok(s)) => break (lease, s),
            Ok(Err(e)) => {
                tracing::warn!(service = %service.name, backend = %addr, error = %e, "connect failed");
                lease.failed();
            }
            Err(_) => {
                tracing::warn!(service = %service.name, backend = %addr, "connect timed out");
                lease.failed();
            }
        }
        tried.push(addr);
        if tried.len() >= MAX_TRIES {
            tracing::warn!(service = %service.name, client = %peer, "giving up after {MAX_TRIES} backends");
            return;
        }
    };
    lease.connected();
    tracing::debug!(service = %service.name, client = %peer, backend = %lease.backend.addr, "connected");
    // The PROXY header and the client's first bytes go out in one write.
    let early_len = early.len() as u64;
    let first = if config.proxy_protocol {
        let local = client.local_addr().unwrap_or(peer);
        let mut header = proxy_v2_header(peer, local);
        header.extend_from_slice(&early);
        header
    } else {
        early
    };
    if !first.is_empty() {
        if let Err(e) = write_all(&server, &first).await {
            tracing::warn!(service = %service.name, backend = %lease.backend.addr, error = %e, "the first bytes could not be sent to the backend");
            return;
        }
        lease.bytes_in(early_len);
    }
    let use_splice = splice && cfg!(target_os = "linux") && SPLICE_WORKS.load(Ordering::Relaxed);
    if let Err(e) = relay(&client, &server, &lease, config.idle_timeout, use_splice).await {
        tracing::debug!(service = %service.name, client = %peer, error = %e, "connection ended with an error");
    }
}

/// Connects to a backend, with the backend leg's options set before the SYN goes out.
///
/// Like tokio's `TcpStream::connect`, but the outcome is read from the readiness event itself:
/// a refused or failed connect reports a hang-up (`EPOLLHUP`), a successful one only writability.
/// The socket error is fetched (`SO_ERROR`) only on failure, which saves a system call on every
/// connection that works.
///
/// With `data_ready` (the client's first bytes are in hand and are written as soon as this
/// returns), the kernel is asked to hold back the handshake's final ACK (TCP_QUICKACK off, as
/// HAProxy's `tcp-smart-connect`): it then travels with those bytes, one packet fewer per
/// connection, and the backend accepts a connection that already has its request. Without data
/// (a protocol where the server speaks first) the handshake is the usual one.
async fn connect(addr: SocketAddr, data_ready: bool) -> io::Result<TcpStream> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking(),
        Some(socket2::Protocol::TCP),
    )?;
    tune_backend(&socket2::SockRef::from(&sock));
    #[cfg(target_os = "linux")]
    if data_ready {
        let _ = sock.set_tcp_quickack(false);
    }
    let _ = data_ready;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(sock))?;
    let ready = stream.ready(Interest::WRITABLE).await?;
    if ready.is_write_closed() {
        return Err(stream.take_error()?.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "connection closed while connecting",
            )
        }));
    }
    Ok(stream)
}

/// When bytes last moved, shared by both directions of a connection.
struct Activity {
    base: Instant,
    millis: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            base: Instant::now(),
            millis: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.millis.store(ms, Ordering::Relaxed);
    }

    fn get(&self) -> Instant {
        self.base + Duration::from_millis(self.millis.load(Ordering::Relaxed))
    }
}

async fn write_all(to: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        to.writable().await?;
        match to.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Relays until both directions have ended, one fails, or the connection idles out.
async fn relay(
    client: &TcpStream,
    server: &TcpStream,
    lease: &Lease,
    idle: Option<Duration>,
    splice: bool,
) -> io::Result<()> {
    let last = Activity::new();
    let ended = std::sync::atomic::AtomicU8::new(0);
    let up = pump(client, server, splice, &last, &ended, |n| lease.bytes_in(n));
    let down = pump(server, client, splice, &last, &ended, |n| {
        lease.bytes_out(n)
    });
    let both = async {
        tokio::pin!(up);
        tokio::pin!(down);
        let (mut up_done, mut down_done) = (false, false);
        while !(up_done && down_done) {
            tokio::select! {
                r = &mut up, if !up_done => { up_done = true; r?; }
                r = &mut down, if !down_done => { down_done = true; r?; }
            }
            // One direction has ended: the connection counts as inactive from now on.
            lease.half_closed();
        }
        Ok::<(), io::Error>(())
    };
    let watchdog = async {
        let Some(idle) = idle else {
            return std::future::pending::<()>().await;
        };
        loop {
            let deadline = last.get() + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let result = tokio::select! {
        r = both => r,
        () = watchdog => Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
    };
    if result.is_err() {
        // Wake whatever is still blocked on either side.
        let _ = socket2::SockRef::from(client).shutdown(Shutdown::Both);
        let _ = socket2::SockRef::from(server).shutdown(Shutdown::Both);
    }
    result
}

thread_local! {
    /// The read buffer of every connection served by this thread: data is written on at once,
    /// and only what the destination cannot take yet is kept per connection. Idle connections
    /// (most ssh sessions) hold no buffer.
    static BUF: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0u8; CHUNK].into_boxed_slice());
}

/// Reads what `from` holds into `buf`, as `try_read` does, but without the extra `recv` that
/// would only answer "nothing more" after a short read.
///
/// A read that returns less than the buffer's size has emptied the socket's receive queue, so the
/// readiness is cleared at once, as an `EAGAIN` would clear it (HAProxy does the same: one `recv`
/// per event). It is safe with edge-triggered epoll: bytes that arrive after the read raise a new
/// event, and tokio clears only the readiness it saw before the read (its tick), never a newer
/// one, nor an end of stream already seen.
fn read_once(from: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Read;
    let mut short = None;
    let r = from.try_io(Interest::READABLE, || {
        let n = (&*socket2::SockRef::from(from)).read(buf)?;
        if n > 0 && n < buf.len() {
            // Reported as WouldBlock so that tokio clears the readiness it saw.
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (r, short) {
        (Err(e), Some(n)) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
        (r, _) => r,
    }
}

/// Ends a direction: passes the end of stream on with a shutdown of `to`'s write half, unless the
/// other direction has ended already (then both sockets are about to be closed, which sends the
/// FIN anyway).
fn end_of_stream(to: &TcpStream, ended: &std::sync::atomic::AtomicU8) {
    if ended.fetch_add(1, Ordering::AcqRel) == 0 {
        let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
    }
}

/// Moves bytes from `from` to `to` until `from` ends, then passes the end on.
///
/// Small transfers are read into the thread's buffer and written on in the same step (as
/// HAProxy's `splice-auto`, splicing a few bytes costs more than copying them: a pipe and twice
/// the calls). Once one read fills the whole buffer, the direction is carrying bulk data and goes
/// over to splice(2) for the rest of the connection.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    splice: bool,
    last: &Activity,
    ended: &std::sync::atomic::AtomicU8,
    count: impl Fn(u64),
) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    loop {
        from.readable().await?;
        let step = BUF.with_borrow_mut(|buf| -> io::Result<Option<(usize, bool)>> {
            let n = match read_once(from, buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            };
            let mut off = 0;
            while off < n {
                match to.try_write(&buf[off..n]) {
                    Ok(m) => off += m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            pending.extend_from_slice(&buf[off..n]);
            Ok(Some((n, n == buf.len())))
        })?;
        let Some((n, full)) = step else { continue };
        if n == 0 {
            end_of_stream(to, ended);
            return Ok(());
        }
        last.touch();
        while !pending.is_empty() {
            to.writable().await?;
            match to.try_write(&pending) {
                Ok(m) => {
                    pending.drain(..m);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        pending = Vec::new();
        count(n as u64);
        #[cfg(target_os = "linux")]
        if full && splice && SPLICE_WORKS.load(Ordering::Relaxed) {
            match splice_pump(from, to, last, ended, &count).await {
                Spliced::Done(r) => return r,
                Spliced::Unsupported(e) => {
                    tracing::warn!(error = %e, "splice refused; copying in userspace from now on");
                    SPLICE_WORKS.store(false, Ordering::Relaxed);
                }
            }
        }
        let _ = (full, splice);
    }
}

/// How a splice relay ended.
#[cfg(target_os = "linux")]
enum Spliced {
    /// For good (the stream ended, or failed).
    Done(io::Result<()>),
    /// The kernel refused to splice from this socket before anything was left in the pipe:
    /// copying may take over where it stopped.
    Unsupported(io::Error),
}

#[cfg(target_os = "linux")]
async fn splice_pump(
    from: &TcpStream,
    to: &TcpStream,
    last: &Activity,
    ended: &std::sync::atomic::AtomicU8,
    count: &impl Fn(u64),
) -> Spliced {
    use nix::fcntl::{OFlag, SpliceFFlags, splice};
    let (pipe_r, pipe_w) = match nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return Spliced::Unsupported(e.into()),
    };
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        // The pipe is empty here, so a splice into it can only wait on the socket.
        if let Err(e) = from.readable().await {
            return Spliced::Done(Err(e));
        }
        let n = match from.try_io(Interest::READABLE, || {
            splice(from, None, &pipe_w, None, CHUNK, flags).map_err(io::Error::from)
        }) {
            Ok(0) => {
                end_of_stream(to, ended);
                return Spliced::Done(Ok(()));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(nix::libc::EINVAL | nix::libc::ENOSYS)
                ) =>
            {
                return Spliced::Unsupported(e);
            }
            Err(e) => return Spliced::Done(Err(e)),
        };
        last.touch();
        let mut left = n;
        while left > 0 {
            if let Err(e) = to.writable().await {
                return Spliced::Done(Err(e));
            }
            match to.try_io(Interest::WRITABLE, || {
                splice(&pipe_r, None, to, None, left, flags).map_err(io::Error::from)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Spliced::Done(Err(e)),
            }
        }
        count(n as u64);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A client that has sent its first bytes by the time it is accepted: they are read before
    /// the backend is connected and reach it right after the PROXY header, already there when the
    /// backend accepts (the handshake's last ACK waited for them); they count as bytes in, and the
    /// rest of the connection relays as usual both ways.
    #[tokio::test]
    async fn early_bytes_follow_the_proxy_header_and_count_as_bytes_in() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let back = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = crate::config::Config::parse(
            &format!(
                "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:1\"\nproxy_protocol = \"v2\"\n\
                 backends = [\"{}\"]\n[service.health]\nkind = \"none\"\n",
                back.local_addr().unwrap()
            ),
            "t.toml",
        )
        .unwrap();
        let service = Service::new(Arc::new(c.services[0].clone()));
        service.set_backends(&[crate::service::BackendSpec {
            addr: back.local_addr().unwrap(),
            weight: 100,
            max_conn: 0,
        }]);
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        client.write_all(b"hello").await.unwrap();
        let (inbound, peer) = front.accept().await.unwrap();
        let relay = tokio::spawn(handle(service.clone(), inbound, peer, true));
        let (server, _) = back.accept().await.unwrap();
        let mut first = [0u8; 64];
        let n = server
            .try_read(&mut first)
            .expect("the backend's connection has its first bytes when it is accepted");
        assert_eq!(
            n,
            28 + 5,
            "the PROXY header and the early bytes are there when the backend accepts"
        );
        assert_eq!(&first[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(
            &first[24..26],
            &client.local_addr().unwrap().port().to_be_bytes()
        );
        assert_eq!(&first[28..n], b"hello");
        let mut server = server;
        client.write_all(b" again").await.unwrap();
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b" again");
        server.write_all(b"bye").await.unwrap();
        drop(server);
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"bye");
        relay.await.unwrap();
        let b = service.backend(back.local_addr().unwrap()).unwrap();
        assert_eq!(
            b.counters.bytes_in.load(Ordering::Relaxed),
            11,
            "the early bytes count, the header does not"
        );
    }

    /// With the client's bytes in hand, the handshake's last ACK is held back until they are
    /// written: the backend cannot accept the connection before its first bytes (the kernel holds
    /// the ACK up to 200 ms); without, the backend can accept it as soon as the connect is done.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_last_ack_of_the_handshake_waits_for_the_first_bytes() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let plain = connect(addr, false).await.unwrap();
        let accepted = l.accept();
        assert!(
            accepted.is_ok(),
            "a plain connect is accepted at once: {accepted:?}"
        );
        drop(plain);
        let held = connect(addr, true).await.unwrap();
        let e = l.accept().unwrap_err();
        assert_eq!(
            e.kind(),
            io::ErrorKind::WouldBlock,
            "accepted before any byte was sent"
        );
        write_all(&held, b"first").await.unwrap();
        let (mut s, _) = (0..200)
            .find_map(|_| {
                std::thread::sleep(Duration::from_millis(5));
                l.accept().ok()
            })
            .expect("accepted once the bytes are sent");
        s.set_nonblocking(false).unwrap();
        let mut got = [0u8; 5];
        std::io::Read::read_exact(&mut s, &mut got).unwrap();
        assert_eq!(&got, b"first");
    }

    #[tokio::test]
    async fn connect_sets_the_backend_options_and_reports_a_refusal() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let s = connect(addr, false).await.unwrap();
        let sock = socket2::SockRef::from(&s);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        #[cfg(target_os = "linux")]
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
        drop(l);
        let e = connect(addr, true).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }

    /// Writes of mixed sizes (most short, some over the 64 KiB buffer, which moves the direction
    /// to splice) through one direction on a two-thread runtime, where a socket's readiness
    /// events can be handled on the other thread between a short read and the clearing of its
    /// readiness. Each write is read in full at the far end before the next is sent, so a wake-up
    /// lost by the relay (readiness cleared while bytes wait) stalls the test: every byte must
    /// arrive, in order, and the end of stream too.
    async fn relay_mixed_writes(splice: bool) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let (inbound, _) = front.accept().await.unwrap();
        let outbound = connect(back.local_addr().unwrap(), false).await.unwrap();
        let (mut server, _) = back.accept().await.unwrap();
        let moved = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let m = moved.clone();
        let relay = tokio::spawn(async move {
            let last = Activity::new();
            let ended = std::sync::atomic::AtomicU8::new(0);
            pump(&inbound, &outbound, splice, &last, &ended, |n| {
                m.fetch_add(n, Ordering::Relaxed);
            })
            .await
        });
        let mut seed = 0x2545_f491_u32;
        let mut total = 0u64;
        for i in 0..2000u32 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let len = if i % 100 == 99 {
                200_000
            } else {
                1 + (seed % 1500) as usize
            };
            let chunk: Vec<u8> = (0..len).map(|k| (k as u32 ^ seed) as u8).collect();
            client.write_all(&chunk).await.unwrap();
            let mut got = vec![0u8; len];
            tokio::time::timeout(Duration::from_secs(10), server.read_exact(&mut got))
                .await
                .unwrap_or_else(|_| panic!("write {i} ({len} bytes) stalled in the relay"))
                .unwrap();
            assert!(got == chunk, "write {i}: the bytes differ");
            total += len as u64;
        }
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), server.read_to_end(&mut rest))
            .await
            .expect("the end of stream was not passed on")
            .unwrap();
        assert!(rest.is_empty());
        relay.await.unwrap().unwrap();
        assert_eq!(moved.load(Ordering::Relaxed), total);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_copied_direction_loses_no_bytes_and_no_wake_up() {
        relay_mixed_writes(false).await;
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_direction_that_goes_over_to_splice_loses_no_bytes() {
        relay_mixed_writes(true).await;
    }

    #[test]
    fn proxy_v2_headers_match_the_specification() {
        let h = proxy_v2_header(
            "127.0.0.5:40000".parse().unwrap(),
            "127.0.0.1:22".parse().unwrap(),
        );
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(&h[14..16], &[0, 12]);
        assert_eq!(&h[16..20], &[127, 0, 0, 5]);
        assert_eq!(&h[20..24], &[127, 0, 0, 1]);
        assert_eq!(&h[24..26], &40000u16.to_be_bytes());
        assert_eq!(&h[26..28], &22u16.to_be_bytes());
        assert_eq!(h.len(), 28);
        let h6 = proxy_v2_header("[::1]:5".parse().unwrap(), "[::1]:22".parse().unwrap());
        assert_eq!(h6[13], 0x21);
        assert_eq!(h6.len(), 16 + 36);
    }
}
