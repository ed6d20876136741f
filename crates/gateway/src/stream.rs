//! A device's TLS connection: rustls' unbuffered connection driven directly over the tokio
//! socket, with the TLS buffers ours.
//!
//! Why not tokio-rustls' acceptor: it flushes everything rustls queued before it hands the
//! connection over, so the TLS 1.3 session ticket (made when the client's Finished arrives) left
//! in a write of its own, and CONNACK in another, a few microseconds later. Here the ticket stays
//! queued and leaves in the same write as CONNACK: one send, one segment and one wake-up of the
//! device fewer on every connect. Closing sends close_notify and lets the socket close, without
//! the `shutdown(2)` that always failed on an already closed peer.
//!
//! Why the unbuffered API: a fleet is mostly idle, and rustls' buffered connection keeps a 4 KiB
//! record buffer for its whole life once it has read. Here the incoming and outgoing bytes live
//! in our own buffers, which give their memory back as soon as they are empty: an idle connection
//! holds none (docs/decisions.md, memory per idle connection).
//!
//! Every await is a readiness wait (`readable`, `writable`), and the rustls state changes between
//! them are synchronous, so every method is cancel-safe in `select!` as far as reading goes: a
//! cancelled read loses nothing. Errors are `io::Error`s carrying the rustls error, as
//! tokio-rustls gave them, so refusal reasons read the same.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use rustls::pki_types::CertificateDer;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{ProtocolVersion, ServerConfig};
use tokio::net::TcpStream;

/// The most TLS bytes held unprocessed: a handshake message may be up to 64 KiB (rustls' own
/// bound) plus a record's framing; anything beyond is refused before it is buffered.
const MAX_INCOMING: usize = 64 * 1024 + 4096;

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 4096;

/// What one round of rustls' state machine came to.
enum Step {
    /// It needs more bytes from the peer.
    NeedData,
    /// It produced or consumed something; ask again.
    Progress,
    /// Encoded records are waiting in `outgoing` and must leave before it goes on.
    Transmit,
    /// The connection is established and nothing is pending: data may be written.
    Ready,
    /// The peer sent close_notify (reported once).
    PeerClosed,
    /// Both sides sent close_notify.
    Closed,
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Why rustls could not write a record into the room it was given.
enum Short {
    /// It needs this many bytes.
    Needs(usize),
    Failed(String),
}

fn encode_failure(e: EncodeError) -> Short {
    match e {
        EncodeError::InsufficientSize(e) => Short::Needs(e.required_size),
        other => Short::Failed(other.to_string()),
    }
}

fn encrypt_failure(e: EncryptError) -> Short {
    match e {
        EncryptError::InsufficientSize(e) => Short::Needs(e.required_size),
        other => Short::Failed(other.to_string()),
    }
}

/// Appends to `out` what `write` puts into a slice (answering its length), first offering
/// `room` bytes and then as many as it says it needs. Nothing is appended on failure.
fn append_records(
    out: &mut Vec<u8>,
    mut room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Short>,
) -> io::Result<()> {
    let start = out.len();
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Short::Needs(needed)) if needed > room => room = needed,
            Err(failure) => {
                out.truncate(start);
                return Err(io::Error::other(match failure {
                    Short::Failed(reason) => reason,
                    Short::Needs(_) => "no room for a TLS record".to_string(),
                }));
            }
        }
    }
}

pub(crate) struct DeviceTls {
    tcp: TcpStream,
    tls: UnbufferedServerConnection,
    /// TLS bytes read from the socket and not yet processed. Empty, and holding no allocation,
    /// whenever rustls has consumed what came: an idle connection keeps no buffer (rustls'
    /// buffered connection keeps a 4 KiB one for its lifetime).
    incoming: Vec<u8>,
    /// Encrypted records waiting to be written (in TLS 1.3 the session ticket waits here for the
    /// first answer).
    outgoing: Vec<u8>,
    /// Decrypted bytes that arrived when nobody was reading (with the handshake's last flight,
    /// or while writing).
    pending: Vec<u8>,
    /// The peer closed its side of the TCP connection.
    eof: bool,
    /// The peer sent close_notify.
    peer_closed: bool,
}

impl DeviceTls {
    /// Completes the TLS handshake. In TLS 1.3 whatever rustls queued at the very end (the
    /// session ticket) is left for the first write; in TLS 1.2 the server's last flight is sent,
    /// because the client waits for it.
    pub(crate) async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<Self> {
        let tls = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
        let mut conn = DeviceTls {
            tcp,
            tls,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            pending: Vec::new(),
            eof: false,
            peer_closed: false,
        };
        loop {
            match conn.step(None)? {
                Step::Progress => {}
                // Once the handshake is done, what is left to send (TLS 1.3's ticket) waits.
                Step::Transmit if !conn.tls.is_handshaking() => break,
                Step::Transmit => conn.send_outgoing().await?,
                Step::NeedData => {
                    if conn.eof {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "tls handshake eof",
                        ));
                    }
                    conn.receive().await?;
                }
                Step::Ready => break,
                Step::PeerClosed | Step::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed during the TLS handshake",
                    ))
                }
            }
        }
        // What rustls queues once the handshake is done (the TLS 1.3 ticket) is encoded now and
        // sent with the first answer; TLS 1.2's last flight went out above.
        while let Step::Progress = conn.step(None)? {}
        if conn.tls.protocol_version() != Some(ProtocolVersion::TLSv1_3) {
            conn.send_outgoing().await?;
        }
        Ok(conn)
    }

    /// The certificates the client presented (leaf first), if any.
    pub(crate) fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.tls.peer_certificates()
    }

    /// Appends decrypted bytes to `buf`. Ok(0): the peer closed cleanly (close_notify); an
    /// `UnexpectedEof` error: it closed without one.
    pub(crate) async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len();
                buf.extend_from_slice(&self.pending);
                self.pending = Vec::new();
                return Ok(n);
            }
            if self.peer_closed {
                return Ok(0);
            }
            let before = buf.len();
            match self.step(Some(buf))? {
                Step::Progress if buf.len() > before => return Ok(buf.len() - before),
                Step::Progress => {}
                Step::Transmit => self.send_outgoing().await?,
                Step::PeerClosed | Step::Closed => self.peer_closed = true,
                Step::NeedData | Step::Ready => {
                    if self.eof {
                        // Nothing more will come, and no close_notify came.
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "peer closed connection without sending TLS close_notify",
                        ));
                    }
                    self.receive().await?;
                }
            }
        }
    }

    /// Encrypts `data` and sends it, with anything queued before it, in as few writes as the
    /// socket allows.
    pub(crate) async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        loop {
            // Whatever rustls has to say first (records to encode, plaintext that came) is
            // handled; then the data is encrypted behind what is queued.
            let UnbufferedStatus { discard, state } =
                self.tls.process_tls_records(&mut self.incoming);
            let done = match state.map_err(tls_error)? {
                ConnectionState::WriteTraffic(mut writer) => {
                    let room = data.len() + 64 * (1 + data.len() / 16384);
                    append_records(&mut self.outgoing, room, |out| {
                        writer.encrypt(data, out).map_err(encrypt_failure)
                    })?;
                    true
                }
                _ => false,
            };
            self.discard(discard);
            if done {
                return self.send_outgoing().await;
            }
            match self.step(None)? {
                Step::Transmit => self.send_outgoing().await?,
                Step::Progress | Step::Ready => {}
                Step::PeerClosed | Step::Closed => self.peer_closed = true,
                Step::NeedData => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "the TLS connection cannot send yet",
                    ))
                }
            }
        }
    }

    /// Sends close_notify (and anything still queued). The socket closes when this is dropped.
    pub(crate) async fn close(&mut self) -> io::Result<()> {
        let UnbufferedStatus { discard, state } = self.tls.process_tls_records(&mut self.incoming);
        if let Ok(ConnectionState::WriteTraffic(mut writer)) = state {
            // A close_notify that cannot be made is simply not sent.
            let _ = append_records(&mut self.outgoing, 64, |out| {
                writer.queue_close_notify(out).map_err(encrypt_failure)
            });
        }
        self.discard(discard);
        self.send_outgoing().await
    }

    /// One round of rustls' state machine over what came; decrypted bytes go to `sink` (or are
    /// kept for the next read), encoded records to `outgoing`.
    fn step(&mut self, sink: Option<&mut BytesMut>) -> io::Result<Step> {
        let UnbufferedStatus { discard, state } = self.tls.process_tls_records(&mut self.incoming);
        let step = match state {
            Err(e) => Err(tls_error(e)),
            Ok(ConnectionState::ReadTraffic(mut records)) => {
                let mut sink = sink;
                let mut failed = None;
                while let Some(record) = records.next_record() {
                    match record {
                        Ok(record) => match sink.as_deref_mut() {
                            Some(buf) => buf.extend_from_slice(record.payload),
                            None => self.pending.extend_from_slice(record.payload),
                        },
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                match failed {
                    Some(e) => Err(tls_error(e)),
                    None => Ok(Step::Progress),
                }
            }
            Ok(ConnectionState::EncodeTlsData(mut encoder)) => {
                append_records(&mut self.outgoing, 2048, |out| {
                    encoder.encode(out).map_err(encode_failure)
                })
                .map(|()| Step::Progress)
            }
            Ok(ConnectionState::TransmitTlsData(transmit)) => {
                // The records are in `outgoing`; the caller sends them before going on.
                transmit.done();
                Ok(Step::Transmit)
            }
            Ok(ConnectionState::BlockedHandshake) => Ok(Step::NeedData),
            Ok(ConnectionState::WriteTraffic(_)) => Ok(Step::Ready),
            Ok(ConnectionState::PeerClosed) => Ok(Step::PeerClosed),
            Ok(ConnectionState::Closed) => Ok(Step::Closed),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unexpected TLS state (early data is not accepted)",
            )),
        };
        self.discard(discard);
        if step.is_err() {
            self.send_alert();
        }
        step
    }

    /// After a TLS error: the alert rustls queued is encoded and goes out if the socket takes it
    /// at once.
    fn send_alert(&mut self) {
        let UnbufferedStatus { state, .. } = self.tls.process_tls_records(&mut []);
        if let Ok(ConnectionState::EncodeTlsData(mut encoder)) = state {
            let _ = append_records(&mut self.outgoing, 64, |out| {
                encoder.encode(out).map_err(encode_failure)
            });
        }
        let _ = self.tcp.try_write(&self.outgoing);
    }

    /// Drops what rustls consumed; an emptied buffer gives its memory back.
    fn discard(&mut self, n: usize) {
        if n >= self.incoming.len() {
            self.incoming = Vec::new();
        } else if n > 0 {
            self.incoming.drain(..n);
        }
    }

    /// Writes everything in `outgoing`, waiting while the socket is full.
    async fn send_outgoing(&mut self) -> io::Result<()> {
        let mut sent = 0;
        while sent < self.outgoing.len() {
            match self.tcp.try_write(&self.outgoing[sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.outgoing.drain(..sent);
                    sent = 0;
                    self.tcp.writable().await?;
                }
                Err(e) => return Err(e),
            }
        }
        self.outgoing = Vec::new();
        Ok(())
    }

    /// Reads what the socket has (waiting until it has something) into `incoming`.
    async fn receive(&mut self) -> io::Result<()> {
        if self.incoming.len() >= MAX_INCOMING {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a TLS message larger than 64 KiB",
            ));
        }
        loop {
            self.incoming.reserve(READ_CHUNK);
            match self.tcp.try_read_buf(&mut self.incoming) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.incoming.is_empty() {
                        // Waiting with nothing buffered: hold no memory while idle.
                        self.incoming = Vec::new();
                    }
                    self.tcp.readable().await?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! A real rustls client, driven by hand over a blocking socket so that each test sees exactly
    //! what arrived in each read.

    use std::io::{Read as _, Write as _};
    use std::net::TcpStream as StdTcpStream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use rustls::client::{ClientSessionMemoryCache, ClientSessionStore};
    use rustls::client::{Tls12ClientSessionValue, Tls13ClientSessionValue};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, NamedGroup, RootCertStore};

    use super::*;

    /// Counts the TLS 1.3 tickets the client receives.
    #[derive(Debug)]
    struct CountingStore {
        inner: ClientSessionMemoryCache,
        tickets: AtomicUsize,
    }

    impl ClientSessionStore for CountingStore {
        fn set_kx_hint(&self, name: ServerName<'static>, group: NamedGroup) {
            self.inner.set_kx_hint(name, group)
        }
        fn kx_hint(&self, name: &ServerName<'_>) -> Option<NamedGroup> {
            self.inner.kx_hint(name)
        }
        fn set_tls12_session(&self, name: ServerName<'static>, value: Tls12ClientSessionValue) {
            self.inner.set_tls12_session(name, value)
        }
        fn tls12_session(&self, name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
            self.inner.tls12_session(name)
        }
        fn remove_tls12_session(&self, name: &ServerName<'static>) {
            self.inner.remove_tls12_session(name)
        }
        fn insert_tls13_ticket(&self, name: ServerName<'static>, value: Tls13ClientSessionValue) {
            self.tickets.fetch_add(1, Ordering::SeqCst);
            self.inner.insert_tls13_ticket(name, value)
        }
        fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
            self.inner.take_tls13_ticket(name)
        }
    }

    struct Setup {
        server: Arc<ServerConfig>,
        roots: RootCertStore,
    }

    fn setup() -> Setup {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let der = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let server = crate::tls::server_config(vec![der.clone()], key).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        Setup { server, roots }
    }

    fn client(
        setup: &Setup,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (ClientConnection, Arc<CountingStore>) {
        let store = Arc::new(CountingStore {
            inner: ClientSessionMemoryCache::new(4),
            tickets: AtomicUsize::new(0),
        });
        let mut config = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(setup.roots.clone())
        .with_no_client_auth();
        config.resumption = rustls::client::Resumption::store(store.clone());
        let conn =
            ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
                .unwrap();
        (conn, store)
    }

    fn connect(port: u16) -> StdTcpStream {
        let sock = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        sock.set_nodelay(true).unwrap();
        sock
    }

    /// Connects and completes the client's side of the handshake (its Finished is sent).
    fn handshake(conn: &mut ClientConnection, port: u16) -> StdTcpStream {
        let mut sock = connect(port);
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        sock
    }

    /// Encrypts `data` and writes it all to the socket.
    fn send(conn: &mut ClientConnection, sock: &mut StdTcpStream, data: &[u8]) {
        conn.writer().write_all(data).unwrap();
        while conn.wants_write() {
            conn.write_tls(sock).unwrap();
        }
    }

    /// Runs `serve` on the next connection accepted on a fresh port; returns the port.
    async fn server<F, Fut>(
        config: Arc<ServerConfig>,
        serve: F,
    ) -> (u16, tokio::task::JoinHandle<Fut::Output>)
    where
        F: FnOnce(io::Result<DeviceTls>) -> Fut + Send + 'static,
        Fut: std::future::Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            serve(DeviceTls::accept(tcp, config).await).await
        });
        (port, task)
    }

    /// The server side of the answer tests: reads "ping", answers "pong".
    async fn ping_pong(tls: io::Result<DeviceTls>) -> DeviceTls {
        let mut tls = tls.unwrap();
        let mut buf = BytesMut::new();
        while buf.len() < 4 {
            assert!(tls.read_buf(&mut buf).await.unwrap() > 0);
        }
        assert_eq!(&buf[..], b"ping");
        tls.write_all(b"pong").await.unwrap();
        tls
    }

    #[tokio::test]
    async fn in_tls13_the_ticket_leaves_with_the_first_answer() {
        let setup = setup();
        let (port, task) = server(setup.server.clone(), |tls| async move {
            ping_pong(tls).await.close().await.unwrap();
        })
        .await;
        let (mut conn, store) = client(&setup, &[&rustls::version::TLS13]);
        tokio::task::spawn_blocking(move || {
            let mut sock = handshake(&mut conn, port);
            // The client's Finished is out; the server has sent nothing since its own flight.
            assert_eq!(store.tickets.load(Ordering::SeqCst), 0);
            send(&mut conn, &mut sock, b"ping");
            // One read of the socket: the ticket and the answer arrive together.
            let mut first = vec![0u8; 64 * 1024];
            let n = sock.read(&mut first).unwrap();
            conn.read_tls(&mut &first[..n]).unwrap();
            conn.process_new_packets().unwrap();
            assert_eq!(
                store.tickets.load(Ordering::SeqCst),
                1,
                "one ticket, with the answer"
            );
            let mut answer = [0u8; 4];
            conn.reader().read_exact(&mut answer).unwrap();
            assert_eq!(&answer, b"pong");
            // Then close_notify: a clean end of stream.
            let mut rest = Vec::new();
            loop {
                let mut chunk = [0u8; 1024];
                let n = sock.read(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                rest.extend_from_slice(&chunk[..n]);
            }
            conn.read_tls(&mut &rest[..]).unwrap();
            conn.process_new_packets().unwrap();
            assert_eq!(conn.reader().read(&mut [0u8; 8]).unwrap(), 0);
        })
        .await
        .unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn tls12_gets_the_servers_last_flight_before_any_answer() {
        let setup = setup();
        let (port, task) = server(setup.server.clone(), |tls| async move {
            ping_pong(tls).await;
        })
        .await;
        let (mut conn, _) = client(&setup, &[&rustls::version::TLS12]);
        tokio::task::spawn_blocking(move || {
            // A TLS 1.2 client sends nothing until the server's Finished has arrived: the
            // handshake would stall here (and fail on the read timeout) if that were held back.
            let mut sock = handshake(&mut conn, port);
            conn.writer().write_all(b"ping").unwrap();
            let mut answer = [0u8; 4];
            while conn.reader().read(&mut answer).is_err() {
                conn.complete_io(&mut sock).unwrap();
            }
            assert_eq!(&answer, b"pong");
        })
        .await
        .unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_peer_gone_without_close_notify_and_a_non_tls_peer_are_errors() {
        let setup = setup();
        let (port, task) = server(setup.server.clone(), |tls| async move {
            let mut tls = tls.unwrap();
            let mut buf = BytesMut::new();
            let mut read = Ok(1);
            while matches!(read, Ok(n) if n > 0) {
                read = tls.read_buf(&mut buf).await;
            }
            (buf, read.map_err(|e| e.kind()))
        })
        .await;
        let (mut conn, _) = client(&setup, &[&rustls::version::TLS13]);
        tokio::task::spawn_blocking(move || {
            let mut sock = handshake(&mut conn, port);
            send(&mut conn, &mut sock, b"bye");
            // Dropped: the TCP connection closes with no close_notify.
        })
        .await
        .unwrap();
        let (buf, end) = task.await.unwrap();
        assert_eq!(&buf[..], b"bye");
        assert_eq!(end, Err(io::ErrorKind::UnexpectedEof));

        // Not TLS at all: the handshake fails with rustls' reason (and an alert is sent).
        let (port, task) = server(setup.server.clone(), |tls| async move {
            tls.err().map(|e| e.to_string())
        })
        .await;
        tokio::task::spawn_blocking(move || {
            let mut sock = connect(port);
            sock.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            let mut alert = Vec::new();
            let _ = sock.read_to_end(&mut alert);
            assert_eq!(alert.first(), Some(&21), "a TLS alert record: {alert:?}");
        })
        .await
        .unwrap();
        let reason = task.await.unwrap().expect("the handshake must fail");
        assert!(
            reason.contains("InvalidContentType") || reason.contains("corrupt"),
            "{reason}"
        );

        // Gone before the handshake ended.
        let (port, task) = server(setup.server.clone(), |tls| async move {
            tls.err().map(|e| e.kind())
        })
        .await;
        drop(connect(port));
        assert_eq!(task.await.unwrap(), Some(io::ErrorKind::UnexpectedEof));
    }
}
