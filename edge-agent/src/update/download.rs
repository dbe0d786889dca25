//! Downloading an offered bundle over HTTP(S), resuming an interrupted transfer with a Range
//! request instead of starting over (a 5G link drops; a bundle is megabytes).
//!
//! The partial file lives beside the final one (`.part`) and survives restarts: a later offer of
//! the same version continues where the last one stopped. The whole file's SHA-256 must match
//! the offer before it is handed to the installer (which then checks the signature).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::backoff::Backoff;

/// How a download behaves.
#[derive(Clone, Debug)]
pub struct DownloadOptions {
    /// Attempts (each resumes) before giving up.
    pub attempts: u32,
    /// First retry delay (doubles, with jitter).
    pub retry_base: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Budget for one attempt's body.
    pub body_timeout: Duration,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            attempts: 8,
            retry_base: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(600),
        }
    }
}

/// What a download did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Downloaded {
    /// The complete, hash-checked file.
    pub path: PathBuf,
    /// Attempts made.
    pub attempts: u32,
    /// Bytes that were already there when the last attempt began (resumed from).
    pub resumed_from: u64,
}

fn sha256_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().into())
}

enum Attempt {
    Complete,
    Retry(String),
    Fatal(String),
}

/// Downloads `url` to `dest`, resuming `dest.part`; blocking.
pub fn download(
    url: &str,
    dest: &Path,
    sha256: &[u8; 32],
    opts: &DownloadOptions,
) -> Result<Downloaded, String> {
    let part = dest.with_extension("part");
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    if dest.exists() && sha256_file(dest).ok().as_ref() == Some(sha256) {
        return Ok(Downloaded {
            path: dest.to_owned(),
            attempts: 0,
            resumed_from: 0,
        });
    }
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(opts.connect_timeout))
        .timeout_recv_response(Some(opts.connect_timeout))
        .timeout_recv_body(Some(opts.body_timeout))
        .build()
        .new_agent();
    let mut backoff = Backoff::new(opts.retry_base, opts.retry_base * 30);
    let mut last_err = String::from("no attempt made");
    for attempt in 1..=opts.attempts.max(1) {
        let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        match one_attempt(&agent, url, &part, have) {
            Attempt::Complete => {
                let got = sha256_file(&part).map_err(|e| format!("{}: {e}", part.display()))?;
                if &got == sha256 {
                    std::fs::rename(&part, dest).map_err(|e| format!("{}: {e}", dest.display()))?;
                    return Ok(Downloaded {
                        path: dest.to_owned(),
                        attempts: attempt,
                        resumed_from: have,
                    });
                }
                // Corrupt or a different file behind the URL: start over.
                let _ = std::fs::remove_file(&part);
                last_err = format!("sha256 {} does not match the offer", hex::encode(got));
            }
            Attempt::Retry(e) => last_err = e,
            Attempt::Fatal(e) => return Err(e),
        }
        if attempt < opts.attempts {
            let delay = backoff.next_delay();
            tracing::warn!(
                attempt,
                "download of {url} interrupted: {last_err}; resuming in {delay:?}"
            );
            std::thread::sleep(delay);
        }
    }
    Err(format!(
        "gave up after {} attempts: {last_err}",
        opts.attempts
    ))
}

fn one_attempt(agent: &ureq::Agent, url: &str, part: &Path, have: u64) -> Attempt {
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let mut resp = match req.call() {
        Ok(r) => r,
        Err(e) => return Attempt::Retry(e.to_string()),
    };
    let status = resp.status().as_u16();
    let append = match status {
        206 => {
            // Trust a partial answer only if it starts where we stopped.
            let start = resp
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if start != Some(have) {
                let _ = std::fs::remove_file(part);
                return Attempt::Retry(format!("server resumed at {start:?}, not at {have}"));
            }
            true
        }
        200 => false,
        416 => return Attempt::Complete,
        404 | 410 => return Attempt::Fatal(format!("{url}: HTTP {status}")),
        s if (400..500).contains(&s) && s != 408 && s != 429 => {
            return Attempt::Fatal(format!("{url}: HTTP {s}"));
        }
        s => return Attempt::Retry(format!("{url}: HTTP {s}")),
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part);
    let mut file = match file {
        Ok(f) => f,
        Err(e) => return Attempt::Fatal(format!("{}: {e}", part.display())),
    };
    let mut body = resp.body_mut().as_reader();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Err(e) = file.write_all(&buf[..n]) {
                    return Attempt::Fatal(format!("{}: {e}", part.display()));
                }
            }
            Err(e) => {
                // Keep what arrived: the next attempt resumes after it.
                let _ = file.sync_all();
                return Attempt::Retry(e.to_string());
            }
        }
    }
    if let Err(e) = file.sync_all() {
        return Attempt::Fatal(format!("{}: {e}", part.display()));
    }
    Attempt::Complete
}
