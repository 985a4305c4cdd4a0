//! A scripted HTTP/1.1 server on 127.0.0.1 for unit tests of the registry
//! client: each connection gets one reply, chosen by a closure from the
//! request's method and target, with a body that may be oversized, endless,
//! slow or stalled.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Maximum time a connection thread waits for the client to hang up, so a
/// test that fails early leaves no thread behind for long.
const HANG_UP_WAIT: Duration = Duration::from_secs(60);

/// Body of a scripted reply.
pub enum Body {
    /// A complete body, sent with its `Content-Length`.
    Fixed(Vec<u8>),
    /// A `Content-Length` of `length`, then `bytes`, then nothing until the
    /// client hangs up.
    Claimed { length: u64, bytes: Vec<u8> },
    /// Chunked: `bytes`, then nothing until the client hangs up.
    Stalled(Vec<u8>),
    /// Chunked and endless: `chunk` every `interval` until the client hangs
    /// up.
    Endless { chunk: Vec<u8>, interval: Duration },
    /// Chunked: `bytes` one byte every `interval`, then the end.
    Slow { bytes: Vec<u8>, interval: Duration },
}

/// A reply to one request.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Reply {
    pub fn new(status: u16, body: Body) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// Starts a server that replies to each request with
/// `respond(method, target)`, and returns its `127.0.0.1:port`.
pub fn serve(respond: impl Fn(&str, &str) -> Reply + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let host = listener.local_addr().expect("local address").to_string();
    let respond = Arc::new(respond);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            let respond = respond.clone();
            std::thread::spawn(move || answer(stream, &*respond));
        }
    });
    host
}

fn answer(mut stream: TcpStream, respond: &(dyn Fn(&str, &str) -> Reply + Send + Sync)) {
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(reader);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let reply = respond(&method, &target);

    let mut head = format!(
        "HTTP/1.1 {} Scripted\r\nConnection: close\r\n",
        reply.status
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    match &reply.body {
        Body::Fixed(bytes) => head.push_str(&format!("Content-Length: {}\r\n", bytes.len())),
        Body::Claimed { length, .. } => head.push_str(&format!("Content-Length: {length}\r\n")),
        Body::Stalled(_) | Body::Endless { .. } | Body::Slow { .. } => {
            head.push_str("Transfer-Encoding: chunked\r\n")
        }
    }
    head.push_str("\r\n");
    if stream.write_all(head.as_bytes()).is_err() || method == "HEAD" {
        return;
    }

    match reply.body {
        Body::Fixed(bytes) => {
            let _ = stream.write_all(&bytes);
        }
        Body::Claimed { bytes, .. } => {
            if stream.write_all(&bytes).is_ok() {
                wait_for_hang_up(&mut reader);
            }
        }
        Body::Stalled(bytes) => {
            if write_chunk(&mut stream, &bytes).is_ok() {
                wait_for_hang_up(&mut reader);
            }
        }
        Body::Endless { chunk, interval } => {
            while write_chunk(&mut stream, &chunk).is_ok() {
                std::thread::sleep(interval);
            }
        }
        Body::Slow { bytes, interval } => {
            for byte in bytes {
                if write_chunk(&mut stream, &[byte]).is_err() {
                    return;
                }
                std::thread::sleep(interval);
            }
            let _ = write_chunk(&mut stream, &[]);
        }
    }
}

fn write_chunk(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(format!("{:x}\r\n", bytes.len()).as_bytes())?;
    stream.write_all(bytes)?;
    stream.write_all(b"\r\n")
}

/// Blocks until the client closes the connection, or [`HANG_UP_WAIT`].
fn wait_for_hang_up(reader: &mut BufReader<TcpStream>) {
    let _ = reader.get_ref().set_read_timeout(Some(HANG_UP_WAIT));
    let mut buffer = [0u8; 256];
    while matches!(reader.read(&mut buffer), Ok(read) if read > 0) {}
}
