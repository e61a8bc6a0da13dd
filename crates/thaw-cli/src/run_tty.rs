//! `thaw run --tty`: the container gets a terminal. The runtime makes a pseudo-terminal
//! and sends its master over a console socket (`--console-socket`, SCM_RIGHTS); this side
//! puts our terminal in raw mode (restored at the end), copies our input to the master and
//! the master to our output, and passes window-size changes (SIGWINCH) on.

use anyhow::{bail, Context, Result};
use std::io::{IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Our terminal in raw mode until dropped.
#[derive(Debug)]
pub struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    /// Puts standard input (a terminal) in raw mode.
    pub fn enter() -> Result<Self> {
        let stdin = std::io::stdin();
        if !rustix::termios::isatty(stdin.as_fd()) {
            bail!("--tty needs standard input to be a terminal");
        }
        let saved =
            rustix::termios::tcgetattr(stdin.as_fd()).context("reading the terminal's settings")?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, &raw)
            .context("putting the terminal in raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        let _ = rustix::termios::tcsetattr(
            stdin.as_fd(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

/// Binds the console socket the runtime will send the terminal's master to.
pub fn console_socket(path: &Path) -> Result<UnixListener> {
    UnixListener::bind(path)
        .with_context(|| format!("binding the console socket {}", path.display()))
}

/// Takes the master the runtime sent (it connected during `create`, which has returned).
pub fn receive_master(listener: &UnixListener) -> Result<OwnedFd> {
    listener
        .set_nonblocking(true)
        .context("the console socket")?;
    let (conn, _) = listener
        .accept()
        .context("the runtime did not send the terminal")?;
    conn.set_nonblocking(false)
        .context("the console connection")?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    rustix::net::recvmsg(
        &conn,
        &mut iov,
        &mut control,
        rustix::net::RecvFlags::empty(),
    )
    .context("receiving the terminal")?;
    for message in control.drain() {
        if let rustix::net::RecvAncillaryMessage::ScmRights(mut fds) = message {
            if let Some(fd) = fds.next() {
                return Ok(fd);
            }
        }
    }
    bail!("the runtime's message on the console socket held no terminal")
}

/// Gives the container's terminal our window size.
pub fn copy_window_size(master: &OwnedFd) {
    if let Ok(size) = rustix::termios::tcgetwinsize(std::io::stdout().as_fd()) {
        let _ = rustix::termios::tcsetwinsize(master, size);
    }
}

/// Starts copying: our input to the terminal (a thread left to end with the process) and
/// the terminal to our output (joined at the end, noting the first byte), and a task that
/// passes window-size changes on.
pub fn relay(
    master: OwnedFd,
    first_byte: Arc<OnceLock<Instant>>,
) -> Result<std::thread::JoinHandle<()>> {
    let master = Arc::new(master);
    let input = std::fs::File::from(master.try_clone().context("the terminal")?);
    std::thread::spawn(move || {
        let mut input = input;
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut input);
    });
    let winch = master.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut changes) = signal(SignalKind::window_change()) else {
            return;
        };
        while changes.recv().await.is_some() {
            copy_window_size(&winch);
        }
    });
    let mut output = std::fs::File::from(master.try_clone().context("the terminal")?);
    Ok(std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        let mut out = std::io::stdout();
        // The read fails (EIO) once every process holding the terminal has exited.
        while let Ok(n) = output.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = first_byte.set(Instant::now());
            let _ = out.write_all(&buf[..n]).and_then(|()| out.flush());
        }
    }))
}
