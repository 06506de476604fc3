//! example-app: a tiny web app that reports its requests to DogStatsD with
//! `cadence`, to show dynostat at work on a dyno or under `dynostat start`.
//!
//! In: HTTP/1.1 requests on `0.0.0.0:$PORT` (default 5000). `GET /` answers
//! a greeting, `GET /slow` the same after 50 ms, anything else 404.
//!
//! Out: for every request, before the response is written, a counter
//! `example_app.requests` and a timer `example_app.request.duration` (ms),
//! tagged `method:`, `route:` and `status:`, sent over UDP to
//! `$DD_AGENT_HOST:$DD_DOGSTATSD_PORT` (default 127.0.0.1:8125), which is
//! where the dynostat boot script points them. Every metric also carries
//! `service:example-app`.
//!
//! Must never: let metrics slow or fail a request (UDP sends are
//! fire-and-forget, errors are only logged), or use anything beyond std and
//! cadence.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cadence::prelude::*;
use cadence::{StatsdClient, UdpMetricSink};

/// How long a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest request line or header line we read.
const MAX_LINE: usize = 8 * 1024;

fn main() {
    let port = env_or("PORT", "5000");
    let statsd_host = env_or("DD_AGENT_HOST", "127.0.0.1");
    let statsd_port = env_or("DD_DOGSTATSD_PORT", "8125");

    let statsd = match statsd_client(&statsd_host, &statsd_port) {
        Ok(client) => Arc::new(client),
        Err(e) => {
            eprintln!("example-app: DogStatsD at {statsd_host}:{statsd_port}: {e}; check DD_AGENT_HOST and DD_DOGSTATSD_PORT");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("example-app: cannot listen on 0.0.0.0:{port}: {e}; set PORT to a free port");
            std::process::exit(2);
        }
    };
    println!("example-app listening on http://0.0.0.0:{port}, sending metrics to {statsd_host}:{statsd_port}");

    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let statsd = Arc::clone(&statsd);
                std::thread::spawn(move || handle(stream, &statsd));
            }
            Err(e) => eprintln!("example-app: accept failed: {e}"),
        }
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// A client that sends each metric as its own datagram, at once: nothing is
/// held in a buffer that a shutdown could lose.
fn statsd_client(host: &str, port: &str) -> Result<StatsdClient, String> {
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port number"))?;
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    let sink = UdpMetricSink::from((host, port), socket).map_err(|e| e.to_string())?;
    Ok(StatsdClient::builder("example_app", sink)
        .with_tag("service", "example-app")
        .with_error_handler(|e| eprintln!("example-app: could not send a metric: {e}"))
        .build())
}

fn handle(stream: TcpStream, statsd: &StatsdClient) {
    let started = Instant::now();
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let Some((method, path)) = read_request_head(&stream) else {
        return;
    };
    let (status, route, body) = route(&method, &path);

    // Metrics go out before the response: once the client has its answer,
    // the request's metrics are already on their way to the listener.
    let status_tag = status.to_string();
    let elapsed = started.elapsed();
    statsd
        .count_with_tags("requests", 1)
        .with_tag("method", &method)
        .with_tag("route", route)
        .with_tag("status", &status_tag)
        .send();
    statsd
        .time_with_tags("request.duration", elapsed)
        .with_tag("method", &method)
        .with_tag("route", route)
        .with_tag("status", &status_tag)
        .send();

    let reason = if status == 200 { "OK" } else { "Not Found" };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = stream;
    let _ = stream.write_all(response.as_bytes());
    println!(
        "{method} {path} {status} {:.1}ms",
        elapsed.as_secs_f64() * 1000.0
    );
}

/// Reads the request line and skips the headers; `None` for a bad or silent client.
fn read_request_head(stream: &TcpStream) -> Option<(String, String)> {
    let mut reader = BufReader::new(stream).take(MAX_LINE as u64 * 16);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => return None,
            Ok(_) if header.trim_end().is_empty() => return Some((method, path)),
            Ok(n) if n > MAX_LINE => return None,
            Ok(_) => {}
        }
    }
}

/// Maps a request to its status, its route tag (bounded: never the raw
/// path, so a scan cannot create unbounded metric contexts) and its body.
fn route(method: &str, path: &str) -> (u16, &'static str, &'static str) {
    let path = path.split('?').next().unwrap_or(path);
    match (method, path) {
        ("GET", "/") => (200, "/", "Hello from the dynostat example app.\n"),
        ("GET", "/slow") => {
            std::thread::sleep(Duration::from_millis(50));
            (200, "/slow", "Hello, slowly.\n")
        }
        _ => (404, "other", "Not found.\n"),
    }
}
