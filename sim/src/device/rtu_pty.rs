//! Modbus RTU over a pseudo-terminal: the slave side behaves like a serial port for clients
//! (pyserial, tokio-serial, mbpoll), the master side feeds the firmware's RTU framer.
//!
//! The server keeps its own handle on the slave side open, so a client closing the port does
//! not hang up the master (reads would fail with EIO) and the next client can open it again.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use firmware::modbus::rtu::{Framer, Silence};
use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::{OptionalActions, tcgetattr, tcsetattr};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tracing::debug;

use super::handle::DeviceHandle;

/// Frames end after this silence: 19200 baud timing (2 ms), ample for a pty where a frame
/// arrives in one write.
const SILENCE: Silence = Silence::for_baud(19_200);

/// An open pseudo-terminal pair.
pub struct Pty {
    master: OwnedFd,
    _slave: OwnedFd,
    path: PathBuf,
}

impl Pty {
    /// Opens a pair in raw mode.
    pub fn open() -> std::io::Result<Pty> {
        let master =
            rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        rustix::pty::grantpt(&master)?;
        rustix::pty::unlockpt(&master)?;
        let name = rustix::pty::ptsname(&master, Vec::new())?;
        let path = PathBuf::from(name.to_string_lossy().into_owned());
        let slave = rustix::fs::open(
            &path,
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut t = tcgetattr(&slave)?;
        t.make_raw();
        tcsetattr(&slave, OptionalActions::Now, &t)?;
        rustix::io::ioctl_fionbio(&master, true)?;
        Ok(Pty {
            master,
            _slave: slave,
            path,
        })
    }

    /// The slave side's path, e.g. `/dev/pts/3`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

/// Serves RTU frames on the pty until the device stops or the pty fails.
pub async fn serve(pty: Pty, device: DeviceHandle) -> std::io::Result<()> {
    let Pty {
        master,
        _slave,
        path,
    } = pty;
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open and refers to the same pty
    // master until the AsyncFd is dropped.
    let fd = unsafe {
        AsyncFd::register_with_interest(master, Interest::READABLE | Interest::WRITABLE)?
    };
    let epoch = Instant::now();
    let mut framer = Framer::new(SILENCE);
    let mut buf = [0u8; 512];
    loop {
        let deadline = framer.deadline_us();
        tokio::select! {
            guard = fd.readable() => {
                let mut guard = guard?;
                match guard.try_io(|inner| Ok(rustix::io::read(inner.get_ref().as_fd(), &mut buf)?)) {
                    Ok(Ok(0)) => {
                        debug!(path = %path.display(), "pty closed");
                        return Ok(());
                    }
                    Ok(Ok(n)) => {
                        let now = micros(epoch);
                        if let Some(frame) = framer.poll(now) {
                            let frame = frame.to_vec();
                            answer(&fd, &device, frame).await?;
                        }
                        for b in &buf[..n] {
                            framer.push(*b, now);
                        }
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => continue,
                }
            }
            _ = sleep_until_us(epoch, deadline), if deadline.is_some() => {
                if let Some(frame) = framer.poll(micros(epoch)) {
                    let frame = frame.to_vec();
                    answer(&fd, &device, frame).await?;
                }
            }
        }
        if !device.is_running() {
            debug!(path = %path.display(), "device stopped; closing the pty");
            return Ok(());
        }
    }
}

async fn sleep_until_us(epoch: Instant, deadline: Option<u64>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until((epoch + std::time::Duration::from_micros(d)).into()).await;
    }
}

async fn answer(
    fd: &AsyncFd<OwnedFd>,
    device: &DeviceHandle,
    frame: Vec<u8>,
) -> std::io::Result<()> {
    let Some(reply) = device.rtu(frame).await else {
        return Ok(());
    };
    let mut written = 0;
    while written < reply.len() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|inner| {
            Ok(rustix::io::write(
                inner.get_ref().as_fd(),
                &reply[written..],
            )?)
        }) {
            Ok(Ok(n)) => written += n,
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}
