//! HTTP for the tests: requests through hyper's client, one per connection, and the raw
//! socket helpers for the tests that must send bytes hyper would never write.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a whole HTTP exchange may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

/// A response: status, headers (names lower-cased, in order) and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (chunked encoding already undone), as text.
    pub body: String,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {}, body: {}",
                self.status, self.body
            )
        })
    }
}

/// Sends one request to `addr` (`host:port`) and reads the whole response.
///
/// `headers` are added as given; `Host`, `Connection: close` and, with a body,
/// `Content-Length` and (unless given) `Content-Type: application/json` are added.
/// Panics on I/O errors and after [`HTTP_TIMEOUT`].
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> HttpResponse {
    tokio::time::timeout(HTTP_TIMEOUT, exchange(addr, method, path, headers, body))
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no complete response in {HTTP_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
}

/// [`http`] over TLS (`https://`), the server verified against `tls`'s roots as `127.0.0.1`.
pub async fn https(
    addr: &str,
    tls: &std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> HttpResponse {
    let exchange = async {
        let (stream, _) = crate::tls::tls_connect(addr, tls).await?;
        exchange_on(stream, addr, method, path, headers, body).await
    };
    tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no complete response in {HTTP_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{method} {path} over TLS: {e:#}"))
}

async fn exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> anyhow::Result<HttpResponse> {
    let stream = TcpStream::connect(addr).await?;
    exchange_on(stream, addr, method, path, headers, body).await
}

async fn exchange_on<S>(
    stream: S,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> anyhow::Result<HttpResponse>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection's driver: it ends with the response (`Connection: close`).
    let driver = tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr)
        .header("connection", "close");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if body.is_some()
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        request = request.header("content-type", "application/json");
    }
    let body = Full::new(Bytes::copy_from_slice(body.unwrap_or_default().as_bytes()));
    let response = sender.send_request(request.body(body)?).await?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect();
    let body = response.into_body().collect().await?.to_bytes();
    driver.abort();
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Parses a raw HTTP/1.1 response read off a socket (head by `httparse`, hyper's parser; the
/// body as its `Content-Length` says, or to the end). For the tests that must speak to the
/// server byte by byte; the others use [`http`].
pub fn parse_response(raw: &[u8]) -> anyhow::Result<HttpResponse> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Response::new(&mut fields);
    let end = match head.parse(raw)? {
        httparse::Status::Complete(end) => end,
        httparse::Status::Partial => {
            anyhow::bail!("no end of headers in {:?}", String::from_utf8_lossy(raw))
        }
    };
    let status = head.code.ok_or_else(|| anyhow::anyhow!("no status code"))?;
    let headers: Vec<(String, String)> = head
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).trim().to_owned();
            (h.name.to_ascii_lowercase(), value)
        })
        .collect();
    anyhow::ensure!(
        !headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked")),
        "a chunked body: read this response with `http`"
    );
    let mut body = raw[end..].to_vec();
    if let Some((_, len)) = headers.iter().find(|(k, _)| k == "content-length") {
        let len: usize = len.parse()?;
        anyhow::ensure!(body.len() >= len, "body shorter than content-length");
        body.truncate(len);
    }
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The `Authorization` header of the backend API, with the key every test gateway gets.
pub const API_AUTH: (&str, &str) = ("Authorization", "Bearer test-api-key");

/// `GET path` on the backend API.
pub async fn api_get(addr: &str, path: &str) -> HttpResponse {
    http(addr, "GET", path, &[API_AUTH], None).await
}

/// `POST path` with a JSON `body` on the backend API.
pub async fn api_post(addr: &str, path: &str, body: serde_json::Value) -> HttpResponse {
    http(addr, "POST", path, &[API_AUTH], Some(&body.to_string())).await
}

/// Publishes `data` to `channel` through `/api/publish`; asserts it was accepted and returns
/// the reply (`offset`, `epoch`).
pub async fn api_publish(addr: &str, channel: &str, data: serde_json::Value) -> serde_json::Value {
    let r = api_post(
        addr,
        "/api/publish",
        serde_json::json!({"channel": channel, "data": data}),
    )
    .await;
    assert_eq!(r.status, 200, "publish to {channel}: {r:?}");
    r.json()
}

/// The value of the first sample of series `name` (with or without labels) in Prometheus
/// text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Reads `/metrics` of the node at `addr` and returns series `name` (see [`metric_value`]).
pub async fn metric(addr: &str, name: &str) -> Option<f64> {
    metric_value(&http(addr, "GET", "/metrics", &[], None).await.body, name)
}

/// Asserts an API error: `status`, and `{"error": {"code": <code>, "message": <non-empty>}}`.
pub fn assert_api_error(r: &HttpResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    let body = r.json();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// Everything the server sends on `s` until it closes the socket, within `wait`; `None` if
/// the socket is still open then.
pub async fn read_until_closed(s: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut raw = Vec::new();
    match tokio::time::timeout(wait, s.read_to_end(&mut raw)).await {
        Ok(_) => Some(raw),
        Err(_) => None,
    }
}

/// Sends `request` (a whole request head, as written) on a fresh socket; returns the response
/// (head, and the body its `Content-Length` announces), the bytes that came after it (the
/// first WebSocket frames after a `101`), and the socket. Panics when no complete response
/// comes within 5 s.
pub async fn exchange_head(addr: &str, request: &str) -> (HttpResponse, Vec<u8>, TcpStream) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let body_len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().expect("content-length"));
            if raw.len() >= end + 4 + body_len {
                let whole = parse_response(&raw[..end + 4 + body_len]).expect("response");
                return (whole, raw[end + 4 + body_len..].to_vec(), s);
            }
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no complete response in 5 s: {raw:?}"))
            .expect("read");
        assert!(n > 0, "closed before a complete response: {raw:?}");
        raw.extend_from_slice(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn api_auth_carries_the_test_api_key() {
        assert_eq!(super::API_AUTH.1, format!("Bearer {}", crate::API_KEY));
    }

    use super::*;

    #[test]
    fn parses_a_raw_response() {
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhi!").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "hi");
        assert_eq!(r.header("x-a"), Some("b"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nX-A: b\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
                .is_err()
        );
    }
}
