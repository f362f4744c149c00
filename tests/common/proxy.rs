//! A small fault-injecting HTTP proxy between the SDK and moto, on loopback. Every `every`th
//! request gets the next fault of a cycle: a throttling error in the service's own error
//! format, an HTTP 500, a connection dropped before or after moto handled the request (the
//! response is lost), or a slow response. The rest pass through. One request per connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy)]
pub enum Fault {
    Throttle,
    ServerError,
    DropBeforeForward,
    DropAfterForward,
    Slow(Duration),
}

pub struct FaultProxy {
    pub endpoint: String,
    recorded: Arc<std::sync::Mutex<Vec<String>>>,
    requests: Arc<AtomicUsize>,
    faults_injected: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: &str, every: usize, faults: Vec<Fault>) -> FaultProxy {
        Self::start_with(upstream, every, faults, None).await
    }

    /// Faults only the first `faults.len()` requests whose head contains `needle` (e.g. an
    /// `X-Amz-Target` operation name), one fault each; everything else passes through.
    pub async fn start_matching(
        upstream: &str,
        needle: &'static str,
        faults: Vec<Fault>,
    ) -> FaultProxy {
        Self::start_with(upstream, 1, faults, Some(needle)).await
    }

    async fn start_with(
        upstream: &str,
        every: usize,
        faults: Vec<Fault>,
        needle: Option<&'static str>,
    ) -> FaultProxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = Arc::new(AtomicUsize::new(0));
        let injected = Arc::new(AtomicUsize::new(0));
        let (r, inj) = (requests.clone(), injected.clone());
        let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
        let rec = recorded.clone();
        let faults = Arc::new(faults);
        let task = tokio::spawn(async move {
            let matched = Arc::new(AtomicUsize::new(0));
            while let Ok((conn, _)) = listener.accept().await {
                let (r, inj, faults, matched) =
                    (r.clone(), inj.clone(), faults.clone(), matched.clone());
                let rec = rec.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let choose = move |head: &str| -> Option<Fault> {
                        let n = r.fetch_add(1, Ordering::SeqCst) + 1;
                        let fault = match needle {
                            None => {
                                (n % every == 0).then(|| faults[(n / every - 1) % faults.len()])
                            }
                            Some(needle) if head.contains(needle) => {
                                faults.get(matched.fetch_add(1, Ordering::SeqCst)).copied()
                            }
                            Some(_) => None,
                        };
                        if fault.is_some() {
                            inj.fetch_add(1, Ordering::SeqCst);
                        }
                        fault
                    };
                    let _ = handle(conn, &upstream, choose, rec).await;
                });
            }
        });
        FaultProxy {
            endpoint,
            recorded,
            requests,
            faults_injected: injected,
            task,
        }
    }

    /// The bodies of every request so far.
    pub fn bodies(&self) -> Vec<String> {
        self.recorded.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn faults_injected(&self) -> usize {
        self.faults_injected.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_request(conn: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((head, body))
}

fn canned(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nx-amzn-RequestId: proxy-fault\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn handle(
    mut conn: TcpStream,
    upstream: &str,
    choose: impl FnOnce(&str) -> Option<Fault>,
    recorded: Arc<std::sync::Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let (head, body) = read_request(&mut conn).await?;
    if let Ok(mut r) = recorded.lock() {
        r.push(String::from_utf8_lossy(&body).into_owned());
    }
    let fault = choose(&head);
    let json_protocol = head.to_ascii_lowercase().contains("x-amz-target:");
    match fault {
        Some(Fault::Throttle) => {
            let resp = if json_protocol {
                canned(
                    "400 Bad Request",
                    "application/x-amz-json-1.1",
                    r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
                )
            } else {
                canned(
                    "400 Bad Request",
                    "text/xml",
                    "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>proxy-fault</RequestId></ErrorResponse>",
                )
            };
            return conn.write_all(&resp).await;
        }
        Some(Fault::ServerError) => {
            return conn
                .write_all(&canned(
                    "500 Internal Server Error",
                    "text/plain",
                    "internal error",
                ))
                .await;
        }
        Some(Fault::DropBeforeForward) => return Ok(()),
        _ => {}
    }
    // Forward with `Connection: close` so moto ends the response by closing.
    let mut forwarded: Vec<u8> = Vec::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        if line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        forwarded.extend_from_slice(line.as_bytes());
        forwarded.extend_from_slice(b"\r\n");
    }
    forwarded.extend_from_slice(b"Connection: close\r\n\r\n");
    forwarded.extend_from_slice(&body);
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(&forwarded).await?;
    let mut response = Vec::new();
    up.read_to_end(&mut response).await?;
    match fault {
        Some(Fault::DropAfterForward) => Ok(()),
        Some(Fault::Slow(d)) => {
            tokio::time::sleep(d).await;
            conn.write_all(&response).await
        }
        _ => conn.write_all(&response).await,
    }
}
