//! Smoke test for the test bed that `scripts/dev-env up` provides: a Docker
//! engine that is a swarm manager, and RabbitMQ answering the stream protocol
//! on 127.0.0.1:5552.
//!
//! With `SWARM_REGISTRY_REQUIRE_DOCKER=1` (resp. `SWARM_REGISTRY_REQUIRE_RABBITMQ=1`)
//! a missing service fails the test; otherwise the test says it is skipping.
//! Only the standard library is used.

use std::env;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

const IO_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
const RABBITMQ_STREAM_ADDR: &str = "127.0.0.1:5552";

const PEER_PROPERTIES_KEY: u16 = 0x0011;
const RESPONSE_FLAG: u16 = 0x8000;
const RESPONSE_CODE_OK: u16 = 0x0001;

fn required(var: &str) -> bool {
    env::var(var).map(|v| v == "1").unwrap_or(false)
}

fn report(var: &str, service: &str, outcome: Result<String, String>) {
    match outcome {
        Ok(detail) => eprintln!("{service}: ok ({detail})"),
        Err(why) if required(var) => panic!(
            "{service} is required ({var}=1) but not usable: {why}\n\
             start the test bed with `scripts/dev-env up` (as root)"
        ),
        Err(why) => eprintln!("skipping {service} smoke test ({var} is not \"1\"): {why}"),
    }
}

fn docker_socket() -> Result<String, String> {
    match env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => match host.strip_prefix("unix://") {
            Some(path) => Ok(path.to_string()),
            None => Err(format!(
                "DOCKER_HOST={host} is not a unix socket; this smoke test only speaks to unix sockets"
            )),
        },
        _ => Ok(DEFAULT_DOCKER_SOCKET.to_string()),
    }
}

/// One unversioned `GET path` over the engine's unix socket; returns the body.
fn docker_get(socket: &str, path: &str) -> Result<String, String> {
    let mut stream =
        UnixStream::connect(socket).map_err(|e| format!("cannot connect to {socket}: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| format!("cannot set timeouts on {socket}: {e}"))?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: docker\r\nAccept: application/json\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send GET {path} to {socket}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("no answer to GET {path} from {socket}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP answer to GET {path}: {text:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("GET {path} answered `{status}`: {body}"));
    }
    Ok(body.to_string())
}

/// The raw JSON value after `"key":` (a string loses its quotes), enough for
/// the flat scalar fields read here.
fn json_scalar<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!("\"{key}\":");
    let start = body.find(&needle)? + needle.len();
    let rest = body[start..].trim_start();
    if let Some(quoted) = rest.strip_prefix('"') {
        quoted.split('"').next()
    } else {
        rest.split([',', '}']).next().map(str::trim)
    }
}

fn check_docker_swarm() -> Result<String, String> {
    let socket = docker_socket()?;
    let info = docker_get(&socket, "/info")?;
    let state = json_scalar(&info, "LocalNodeState").unwrap_or("absent");
    let control = json_scalar(&info, "ControlAvailable").unwrap_or("absent");
    let version = json_scalar(&info, "ServerVersion").unwrap_or("unknown");
    if state != "active" || control != "true" {
        return Err(format!(
            "engine {version} at {socket} is not a swarm manager \
             (Swarm.LocalNodeState={state}, Swarm.ControlAvailable={control})"
        ));
    }
    Ok(format!(
        "engine {version} at {socket}, swarm manager active"
    ))
}

fn put_string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as i16).to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.buf.len() < n {
            return Err(format!("stream frame truncated: wanted {n} more bytes"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self) -> Result<String, String> {
        let len = self.u16()? as i16;
        if len < 0 {
            return Ok(String::new());
        }
        Ok(String::from_utf8_lossy(self.take(len as usize)?).into_owned())
    }
}

/// Opens a TCP connection to the stream port and exchanges PeerProperties,
/// the first command of the RabbitMQ stream protocol.
fn check_rabbitmq_stream() -> Result<String, String> {
    let addr: SocketAddr = RABBITMQ_STREAM_ADDR
        .parse()
        .map_err(|e| format!("bad address {RABBITMQ_STREAM_ADDR}: {e}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| format!("no TCP connection to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| format!("cannot set timeouts on {addr}: {e}"))?;

    let correlation_id: u32 = 1;
    let mut body = Vec::new();
    body.extend_from_slice(&PEER_PROPERTIES_KEY.to_be_bytes());
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(&correlation_id.to_be_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    put_string(&mut body, "product");
    put_string(&mut body, "swarm-registry smoke test");
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    stream
        .write_all(&frame)
        .map_err(|e| format!("cannot send PeerProperties to {addr}: {e}"))?;

    let mut size = [0u8; 4];
    stream
        .read_exact(&mut size)
        .map_err(|e| format!("connected to {addr} but no stream protocol answer: {e}"))?;
    let size = u32::from_be_bytes(size) as usize;
    if size > 1 << 20 {
        return Err(format!("implausible stream frame size {size} from {addr}"));
    }
    let mut answer = vec![0u8; size];
    stream
        .read_exact(&mut answer)
        .map_err(|e| format!("truncated stream protocol answer from {addr}: {e}"))?;

    let mut r = Reader { buf: &answer };
    let key = r.u16()?;
    let _version = r.u16()?;
    let answered_id = r.u32()?;
    let code = r.u16()?;
    if key != (PEER_PROPERTIES_KEY | RESPONSE_FLAG) || answered_id != correlation_id {
        return Err(format!(
            "{addr} answered key {key:#06x} correlation {answered_id}, \
             expected a PeerProperties response ({:#06x}) to {correlation_id}",
            PEER_PROPERTIES_KEY | RESPONSE_FLAG
        ));
    }
    if code != RESPONSE_CODE_OK {
        return Err(format!(
            "{addr} refused PeerProperties with response code {code}"
        ));
    }
    let count = r.u32()?;
    let (mut product, mut version) = (String::from("?"), String::from("?"));
    for _ in 0..count {
        let name = r.string()?;
        let value = r.string()?;
        match name.as_str() {
            "product" => product = value,
            "version" => version = value,
            _ => {}
        }
    }
    Ok(format!(
        "{product} {version} speaks the stream protocol on {addr}"
    ))
}

#[test]
fn docker_engine_is_a_swarm_manager() {
    report(
        "SWARM_REGISTRY_REQUIRE_DOCKER",
        "Docker swarm",
        check_docker_swarm(),
    );
}

#[test]
fn rabbitmq_stream_port_answers() {
    report(
        "SWARM_REGISTRY_REQUIRE_RABBITMQ",
        "RabbitMQ stream",
        check_rabbitmq_stream(),
    );
}
