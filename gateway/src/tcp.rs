//! A TCP socket option that neither tokio nor socket2 sets, through libc: accepting a
//! connection with its request (`TCP_DEFER_ACCEPT`).

use std::os::fd::{AsRawFd, RawFd};

/// Seconds the kernel holds a new connection that has sent nothing before handing it to
/// `accept` anyway (`TCP_DEFER_ACCEPT`): a real client sends its request at once, and a
/// silent socket then meets the handshake timeout as before, a second later.
const DEFER_ACCEPT_SECS: libc::c_int = 1;

/// Asks the kernel to hand a connection to `accept` once its first bytes (the HTTP request)
/// have arrived, not at the end of the TCP handshake: accepting and reading the request then
/// take one wake of the worker instead of two, and a socket that never speaks costs the node
/// nothing for a second.
pub fn defer_accept(socket: &tokio::net::TcpSocket) -> std::io::Result<()> {
    set_int(
        socket.as_raw_fd(),
        libc::TCP_DEFER_ACCEPT,
        DEFER_ACCEPT_SECS,
    )
}

fn set_int(fd: RawFd, option: libc::c_int, value: libc::c_int) -> std::io::Result<()> {
    // SAFETY: `fd` is a socket this process holds open for the call (each caller's contract);
    // the value is a c_int that outlives the call, and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            option,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
