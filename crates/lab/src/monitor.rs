//! A client of the supervisor's monitor API (`GET /api/state` over HTTPS,
//! pinned to the supervisor's CA, with the operator token): the lab asks it
//! for the overlay order of the stream, onto which the paper's failure
//! distributions are mapped.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

/// The largest response the lab reads.
const MAX_RESPONSE: usize = 8 << 20;

/// The monitor of one supervisor.
#[derive(Clone)]
pub struct Monitor {
    /// Its URL (`https://HOST:PORT/`).
    pub url: String,
    host: String,
    port: u16,
    token: String,
    tls: TlsConnector,
}

/// One node of a stream's overlay, as the monitor reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct Node {
    /// Its peer id.
    pub peer: String,
    /// Its index in the overlay order (0 = nearest the broadcaster).
    pub position: usize,
    /// Hops from the broadcaster.
    #[serde(default)]
    pub depth: u32,
}

/// One stream, as the monitor reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct Stream {
    /// Its name.
    pub name: String,
    /// Its receivers.
    pub nodes: Vec<Node>,
}

#[derive(Deserialize)]
struct State {
    streams: Vec<Stream>,
}

impl Monitor {
    /// A client for `https://HOST:PORT/`, trusting `SUPERVISOR_DIR/trust/ca.crt`
    /// and authenticating with `SUPERVISOR_DIR/monitor.token`.
    pub fn new(url: &str, supervisor_dir: &Path) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("https://")
            .with_context(|| format!("not an https URL: {url}"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let (host, port) = authority
            .rsplit_once(':')
            .with_context(|| format!("no port in {url}"))?;
        let port: u16 = port.parse().with_context(|| format!("bad port in {url}"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let token_path = supervisor_dir.join("monitor.token");
        let token = std::fs::read_to_string(&token_path)
            .with_context(|| format!("cannot read {}", token_path.display()))?
            .trim()
            .to_owned();
        let ca_path = supervisor_dir.join("trust").join("ca.crt");
        let ca = CertificateDer::from_pem_file(&ca_path)
            .with_context(|| format!("cannot read {}", ca_path.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).context("the supervisor's CA")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            url: url.to_owned(),
            host,
            port,
            token,
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// `GET path`; the body of a 200 response.
    async fn get(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let io = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
            let name = ServerName::try_from(self.host.clone())
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let mut tls = self.tls.connect(name, tcp).await?;
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {}:{}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
                self.host, self.port, self.token
            );
            tls.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            (&mut tls)
                .take(MAX_RESPONSE as u64 + 1)
                .read_to_end(&mut response)
                .await?;
            Ok::<_, std::io::Error>(response)
        };
        let response = timeout(Duration::from_secs(5), io)
            .await
            .context("the monitor did not answer within 5 s")??;
        if response.len() > MAX_RESPONSE {
            bail!("the monitor's answer exceeds {MAX_RESPONSE} bytes");
        }
        parse_response(&response)
    }

    /// The receivers of stream `name` in overlay order.
    pub async fn order(&self, name: &str) -> anyhow::Result<Vec<Node>> {
        let body = self.get("/api/state").await?;
        let state: State = serde_json::from_slice(&body).context("the monitor's /api/state")?;
        let mut nodes = state
            .streams
            .into_iter()
            .find(|s| s.name == name)
            .map(|s| s.nodes)
            .unwrap_or_default();
        nodes.sort_by_key(|n| n.position);
        Ok(nodes)
    }
}

/// The body of an HTTP/1.1 response that must be `200` (plain or chunked).
fn parse_response(response: &[u8]) -> anyhow::Result<Vec<u8>> {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("truncated HTTP response")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let body = &response[split + 4..];
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("the monitor answered {status:?}");
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Ok(body.to_vec());
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("bad chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_and_chunked_bodies() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).expect("ok"), b"{}");
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).expect("ok"), b"{\"a\":1}");
    }

    #[test]
    fn refuses_errors_and_truncation() {
        let e = parse_response(b"HTTP/1.1 401 Unauthorized\r\n\r\nno").expect_err("401");
        assert!(e.to_string().contains("401"), "{e}");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nab")
                .is_err()
        );
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }
}
