//! Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
//! JSON messages ended by a NUL byte on file descriptors 3 and 4), so a test can open a page,
//! read its DOM and take a screenshot with nothing but the standard library and serde_json.
//! The descriptors are two named pipes the shell attaches before it starts the browser.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use serde_json::{json, Value};

/// Flags Chromium needs as root in a closed network, and a fixed window for screenshots.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--window-size=1280,800",
    "--remote-debugging-pipe",
];

/// How long one protocol command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// Whether chromium is installed; when not, fail if SWARM_REGISTRY_REQUIRE_BROWSER=1 (the
/// test command installs it), else say so and return false.
pub fn chromium_installed(test: &str) -> bool {
    let found = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("SWARM_REGISTRY_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "{test}: chromium is required (SWARM_REGISTRY_REQUIRE_BROWSER=1) but not installed: run scripts/dev-env up"
        );
        eprintln!("SKIP {test}: chromium is not installed");
    }
    found
}

/// A running browser, ended (with every process it started) when dropped.
pub struct Browser {
    child: Child,
    dir: PathBuf,
    commands: File,
    replies: Receiver<Value>,
    next_id: u64,
    log: PathBuf,
}

/// One tab, attached for commands.
pub struct Page {
    session: String,
}

impl Browser {
    pub fn launch(name: &str) -> Browser {
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let (to_browser, from_browser) = (dir.join("in"), dir.join("out"));
        let status = Command::new("mkfifo")
            .arg(&to_browser)
            .arg(&from_browser)
            .status()
            .unwrap();
        assert!(status.success(), "mkfifo");
        let profile = dir.join("profile");
        let log = dir.join("chromium.log");
        let script = format!(
            "exec chromium {} --user-data-dir='{}' about:blank 3<'{}' 4>'{}'",
            FLAGS.join(" "),
            profile.display(),
            to_browser.display(),
            from_browser.display()
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .process_group(0)
            .spawn()
            .expect("sh starts chromium");
        // The shell opens its read end first, then its write end: open ours in that order.
        let commands = OpenOptions::new().write(true).open(&to_browser).unwrap();
        let replies_file = File::open(&from_browser).unwrap();
        let (send, replies) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(replies_file);
            loop {
                let mut message = Vec::new();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        message.pop();
                        if let Ok(value) = serde_json::from_slice::<Value>(&message) {
                            if send.send(value).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Browser {
            child,
            dir,
            commands,
            replies,
            next_id: 0,
            log,
        }
    }

    /// Send one command (to a page's session, or to the browser) and wait for its result.
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap();
        loop {
            let reply = self
                .replies
                .recv_timeout(COMMAND_LIMIT)
                .unwrap_or_else(|_| {
                    panic!(
                        "no answer to {method} within {COMMAND_LIMIT:?}; chromium said:\n{}",
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    )
                });
            if reply["id"] == id {
                assert!(
                    reply.get("error").is_none(),
                    "{method} failed: {}",
                    reply["error"]
                );
                return reply["result"].clone();
            }
        }
    }

    /// Open `url` in a new tab.
    pub fn open(&mut self, url: &str) -> Page {
        let target = self.call(None, "Target.createTarget", json!({"url": url}));
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        let page = Page { session };
        self.call(
            Some(&page.session),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false}),
        );
        page
    }

    /// Evaluate a JavaScript expression in the page; its value, returned by value.
    pub fn evaluate(&mut self, page: &Page, expression: &str) -> Value {
        let result = self.call(
            Some(&page.session),
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// A PNG of what the page shows now, written to `path`.
    pub fn screenshot(&mut self, page: &Page, path: &Path) {
        let shot = self.call(
            Some(&page.session),
            "Page.captureScreenshot",
            json!({"format": "png"}),
        );
        let png = decode_base64(shot["data"].as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "chromium output:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Standard base64 (the protocol's encoding of binary results).
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// What the dashboard shows: the connection badge and every row's cells.
pub const DASHBOARD_STATE: &str = r##"(() => {
  const badge = document.getElementById("connection");
  if (!badge) return JSON.stringify({ state: "loading", resumes: 0, detail: "", rows: [] });
  return JSON.stringify({
    state: badge.dataset.state,
    resumes: Number(badge.dataset.resumes || 0),
    detail: document.getElementById("connection-detail").textContent,
    revision: document.getElementById("revision").textContent,
    rows: [...document.querySelectorAll("#services tr")].map((tr) => ({
      name: tr.dataset.name,
      cells: [...tr.cells].map((td) => td.textContent),
    })),
  });
})()"##;

/// The dashboard's state, parsed.
pub fn dashboard(browser: &mut Browser, page: &Page) -> Value {
    let text = browser.evaluate(page, DASHBOARD_STATE);
    serde_json::from_str(text.as_str().unwrap()).unwrap()
}

/// The cells of `name`'s row, if the page shows it. Columns: service, replicas, min–max,
/// scales on, CPU, CPU history, memory, memory history, config errors, last change.
pub fn row<'a>(state: &'a Value, name: &str) -> Option<Vec<&'a str>> {
    state["rows"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
        .map(|r| {
            r["cells"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect()
        })
}

#[test]
fn base64_decodes() {
    assert_eq!(decode_base64("aGVsbG8="), b"hello");
    assert_eq!(decode_base64("aGk="), b"hi");
    assert_eq!(decode_base64("YWJj"), b"abc");
}
