//! The route-netlink connection shared by the link and route code (and
//! [`crate::host_ipv6`]).

use std::io;

use rtnetlink::Handle;

/// A route-netlink socket in the calling thread's network namespace, its
/// connection driven by a task on the current tokio runtime.
pub(crate) fn connect() -> io::Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    Ok(handle)
}

/// The kernel's errno when there is one ("File exists (os error 17)"),
/// rtnetlink's own description otherwise.
pub(crate) fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(message) => message.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

/// True when `e` is the kernel answering with errno `code`.
pub(crate) fn is_errno(e: &rtnetlink::Error, code: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code().abs() == code)
}
