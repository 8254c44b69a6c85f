//! Test backends for nginx upstreams: small HTTP and HTTPS servers on 127.0.0.1 whose
//! behaviour can be switched at run time, counting what they receive.
//!
//! Every backend runs one accept thread plus one short-lived thread per connection; all of
//! them stop when the [`Backend`] is dropped (drop waits, bounded, for them to finish).
//!
//! Requests whose path starts with the probe prefix (default `/health`) count as health
//! probes, all others as proxied requests, so tests can tell checker traffic from client
//! traffic.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// How a backend answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `HTTP/1.1 <code>` with a short body naming the backend (`Status(200)` is healthy).
    Status(u16),
    /// Reads the request, then sends nothing until the client gives up (or the backend is
    /// dropped, or 60 s pass).
    Hang,
    /// Closes the connection as soon as it is accepted (before any TLS handshake).
    Close,
    /// Answers a line that is not an HTTP status line.
    Garbage,
    /// Stops listening: connections are refused until another mode is set.
    Refuse,
}

impl Mode {
    pub const OK: Mode = Mode::Status(200);
    pub const ERROR: Mode = Mode::Status(500);
}

/// Longest time a connection thread waits for anything (reading a request, hanging).
const MAX_HANG: Duration = Duration::from_secs(60);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);

struct Shared {
    port: u16,
    name: String,
    mode: Mutex<Mode>,
    probe_prefix: Mutex<String>,
    probes: AtomicUsize,
    proxied: AtomicUsize,
    /// Request lines and TLS server names seen, in order (capped, for assertions).
    requests: Mutex<Vec<Request>>,
    stop: AtomicBool,
    live_connections: AtomicUsize,
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// One request as the backend saw it.
#[derive(Clone, Debug)]
pub struct Request {
    /// The request line, e.g. `GET /health HTTP/1.0`.
    pub line: String,
    /// The path from the request line.
    pub path: String,
    /// The TLS server name (SNI) the client sent, for HTTPS backends.
    pub sni: Option<String>,
    pub probe: bool,
}

const MAX_RECORDED: usize = 10_000;

pub struct Backend {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Backend {
    /// A plain HTTP backend on a free port of 127.0.0.1, answering 200.
    pub fn http(name: &str) -> Backend {
        Backend::start(name, None)
    }

    /// An HTTPS backend presenting a certificate issued by `ca` for `names`.
    pub fn https(name: &str, ca: &TestCa, names: &[&str]) -> Backend {
        Backend::start(name, Some(ca.server_config(names)))
    }

    fn start(name: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a backend on 127.0.0.1");
        listener.set_nonblocking(true).expect("make the listener non-blocking");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            port,
            name: name.to_owned(),
            mode: Mutex::new(Mode::OK),
            probe_prefix: Mutex::new("/health".to_owned()),
            probes: AtomicUsize::new(0),
            proxied: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            live_connections: AtomicUsize::new(0),
            tls,
        });
        let acceptor = {
            let shared = shared.clone();
            thread::Builder::new().name(format!("backend-{name}")).spawn(move || accept_loop(shared, listener)).expect("spawn a backend thread")
        };
        Backend { shared, acceptor: Some(acceptor) }
    }

    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// `127.0.0.1:PORT`, as nginx names the peer.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.shared.port)
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    pub fn mode(&self) -> Mode {
        *self.shared.mode.lock().unwrap()
    }

    /// Paths starting with `prefix` count as health probes (default `/health`).
    pub fn set_probe_prefix(&self, prefix: &str) {
        *self.shared.probe_prefix.lock().unwrap() = prefix.to_owned();
    }

    /// Health-check requests received so far (in every mode but `Close` and `Refuse`).
    pub fn probes(&self) -> usize {
        self.shared.probes.load(Ordering::SeqCst)
    }

    /// Other (proxied) requests received so far.
    pub fn proxied(&self) -> usize {
        self.shared.proxied.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Forgets the counters and the recorded requests.
    pub fn reset_counts(&self) {
        self.shared.probes.store(0, Ordering::SeqCst);
        self.shared.proxied.store(0, Ordering::SeqCst);
        self.shared.requests.lock().unwrap().clear();
    }

    /// Waits until `probes()` reaches `n`; false after `limit`.
    pub fn wait_probes(&self, n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.probes() >= n {
                return true;
            }
            sleep(POLL);
        }
        self.probes() >= n
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // Connection threads poll the stop flag; give them a bounded moment to go.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.shared.live_connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            sleep(POLL);
        }
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut listener = Some(listener);
    while !shared.stop.load(Ordering::SeqCst) {
        let refuse = *shared.mode.lock().unwrap() == Mode::Refuse;
        if refuse {
            // Closing the socket is what makes the kernel refuse connections.
            listener = None;
            sleep(POLL);
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => match rebind(shared.port) {
                Some(l) => listener.insert(l),
                None => {
                    sleep(POLL);
                    continue;
                }
            },
        };
        match l.accept() {
            Ok((stream, peer)) => {
                let shared2 = shared.clone();
                shared.live_connections.fetch_add(1, Ordering::SeqCst);
                let spawned = thread::Builder::new().name(format!("backend-{}-conn", shared.name)).spawn(move || {
                    let _ = handle(&shared2, stream, peer);
                    shared2.live_connections.fetch_sub(1, Ordering::SeqCst);
                });
                if spawned.is_err() {
                    shared.live_connections.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => sleep(POLL),
            Err(_) => sleep(POLL),
        }
    }
}

/// Binds the backend's port again after `Refuse`; std sets SO_REUSEADDR, so a port in
/// TIME_WAIT is fine, but another process may have taken it meanwhile (then: retry).
fn rebind(port: u16) -> Option<TcpListener> {
    let l = TcpListener::bind(("127.0.0.1", port)).ok()?;
    l.set_nonblocking(true).ok()?;
    Some(l)
}

/// A stream that is either plain TCP or TLS over TCP.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

fn handle(shared: &Shared, stream: TcpStream, _peer: SocketAddr) -> std::io::Result<()> {
    // The listener is non-blocking; the accepted socket must not be.
    stream.set_nonblocking(false)?;
    if *shared.mode.lock().unwrap() == Mode::Close {
        let _ = stream.shutdown(Shutdown::Both);
        return Ok(());
    }
    // Short read timeouts so that the thread notices the stop flag while waiting.
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;

    let mut conn = match &shared.tls {
        None => Conn::Plain(stream),
        Some(config) => {
            let tls = rustls::ServerConnection::new(config.clone()).map_err(std::io::Error::other)?;
            Conn::Tls(Box::new(rustls::StreamOwned::new(tls, stream)))
        }
    };

    let head = match read_head(shared, &mut conn)? {
        Some(head) => head,
        None => return Ok(()),
    };
    let line = head.split("\r\n").next().unwrap_or("").to_owned();
    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
    let probe = path.starts_with(shared.probe_prefix.lock().unwrap().as_str());
    let sni = match &conn {
        Conn::Tls(s) => s.conn.server_name().map(str::to_owned),
        Conn::Plain(_) => None,
    };
    if probe {
        shared.probes.fetch_add(1, Ordering::SeqCst);
    } else {
        shared.proxied.fetch_add(1, Ordering::SeqCst);
    }
    {
        let mut requests = shared.requests.lock().unwrap();
        if requests.len() < MAX_RECORDED {
            requests.push(Request { line, path: path.clone(), sni, probe });
        }
    }

    // The mode at the time the request arrived decides the answer.
    let mode = *shared.mode.lock().unwrap();
    match mode {
        Mode::Status(code) => {
            let body = format!("backend={} port={} path={}\n", shared.name, shared.port, path);
            let reply =
                format!("HTTP/1.1 {code} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", reason(code), body.len());
            conn.write_all(reply.as_bytes())?;
            conn.flush()?;
        }
        Mode::Garbage => {
            conn.write_all(b"GARBAGE NOT HTTP\r\n\r\n")?;
            conn.flush()?;
        }
        Mode::Hang => {
            let deadline = Instant::now() + MAX_HANG;
            let mut buf = [0u8; 512];
            while !shared.stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match conn.read(&mut buf) {
                    Ok(0) => break, // the client gave up
                    Ok(_) => {}
                    Err(e) if is_timeout(&e) => {}
                    Err(_) => break,
                }
            }
        }
        Mode::Close | Mode::Refuse => {}
    }
    if let Conn::Tls(s) = &mut conn {
        s.conn.send_close_notify();
        let _ = s.flush();
    }
    let _ = conn.tcp().shutdown(Shutdown::Both);
    Ok(())
}

/// Reads up to the end of the request head; None when the client went away, the backend
/// stops, or nothing complete arrives within `IO_TIMEOUT`.
fn read_head(shared: &Shared, conn: &mut Conn) -> std::io::Result<Option<String>> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    while !data.windows(4).any(|w| w == b"\r\n\r\n") {
        if shared.stop.load(Ordering::SeqCst) || Instant::now() > deadline || data.len() > 64 * 1024 {
            return Ok(None);
        }
        match conn.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if is_timeout(&e) => {}
            Err(_) => return Ok(None),
        }
    }
    Ok(Some(String::from_utf8_lossy(&data).into_owned()))
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        204 => "No Content",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// A throw-away certificate authority for HTTPS backends.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "e2e test CA");
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().expect("generate a CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa { cert, key }
    }

    /// The CA certificate in PEM, for `lua_ssl_trusted_certificate`.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes the CA certificate (PEM) to `path`, readable by nginx's workers.
    pub fn write_pem(&self, path: &Path) {
        std::fs::write(path, self.pem()).expect("write the CA certificate");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
        }
    }

    /// A leaf certificate for `names` (DNS names or IP addresses) and its PKCS#8 key.
    pub fn issue(&self, names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).expect("certificate names");
        params.distinguished_name.push(rcgen::DnType::CommonName, names.first().cloned().unwrap_or_default());
        let key = rcgen::KeyPair::generate().expect("generate a leaf key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign a leaf certificate");
        (cert.der().clone(), PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
    }

    fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let (leaf, key) = self.issue(names);
        let chain = vec![leaf, self.cert.der().clone()];
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        Arc::new(config)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}
