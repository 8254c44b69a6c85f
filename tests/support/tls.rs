//! TLS for tests: server files for nginx, and a client that trusts only the test CA.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::TestCa;

fn pem(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der.to_vec()))
}

/// Writes `server.crt` (leaf, then CA) and `server.key` for `names` into `dir`.
pub fn write_server_files(ca: &TestCa, dir: &Path, names: &[&str]) {
    let (leaf, key) = ca.issue(names);
    std::fs::write(dir.join("server.crt"), format!("{}{}", pem("CERTIFICATE", &leaf), ca.pem())).unwrap();
    std::fs::write(dir.join("server.key"), pem("PRIVATE KEY", key.secret_der())).unwrap();
}

/// `GET path` over TLS to 127.0.0.1:port with SNI `server_name`, verifying the server against
/// `ca`; returns the whole response (status line, headers and body).
pub fn https_get(port: u16, server_name: &str, ca: &TestCa, path: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    let ca_der = pem::parse(ca.pem()).unwrap().into_contents();
    roots.add(rustls::pki_types::CertificateDer::from(ca_der)).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}
