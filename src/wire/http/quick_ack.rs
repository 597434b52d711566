//! Acknowledging received data at once, for clients that send a request in two small writes.
//!
//! ccache writes a PUT's headers and its body separately, with Nagle's algorithm on: the body
//! waits until the headers are acknowledged. Once a keep-alive connection has exchanged a
//! response, Linux delays that acknowledgement (up to ~40 ms) hoping to piggyback it on a reply
//! that cannot come before the body does, so every such PUT stalls. Setting `TCP_QUICKACK`
//! after each read that returns data sends the pending acknowledgement immediately.
//!
//! The simulator's sockets have no such timing, so under madsim the stream is used as is.

use tokio::net::TcpStream;

/// `stream`, wrapped so reads acknowledge at once where the platform allows it.
#[cfg(all(target_os = "linux", not(madsim)))]
pub(super) fn wrap(stream: TcpStream) -> linux::QuickAck {
    linux::QuickAck { stream }
}

/// `stream` unchanged: this platform (or the simulator) needs no help.
#[cfg(not(all(target_os = "linux", not(madsim))))]
pub(super) fn wrap(stream: TcpStream) -> TcpStream {
    stream
}

#[cfg(all(target_os = "linux", not(madsim)))]
mod linux {
    use std::io;
    use std::os::fd::AsRawFd;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::TcpStream;

    /// A TCP stream that re-arms `TCP_QUICKACK` after every read that returns data.
    pub(in super::super) struct QuickAck {
        pub(super) stream: TcpStream,
    }

    impl QuickAck {
        fn ack_now(&self) {
            let one: libc::c_int = 1;
            // SAFETY: the descriptor is owned by `self.stream` and open for the call, and the
            // option value points to a live c_int of the length given. Failure is harmless
            // (acknowledgements are merely delayed), so the result is ignored.
            unsafe {
                libc::setsockopt(
                    self.stream.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_QUICKACK,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }

    impl AsyncRead for QuickAck {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            let result = Pin::new(&mut self.stream).poll_read(cx, buf);
            if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
                // The kernel clears the mode again by itself, hence once per read.
                self.ack_now();
            }
            result
        }
    }

    impl AsyncWrite for QuickAck {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.stream).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.stream.is_write_vectored()
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.stream).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.stream).poll_shutdown(cx)
        }
    }
}
