//! Batched UDP: `recvmmsg` takes up to [`BATCH`] datagrams in one system
//! call and `sendmmsg` sends up to [`BATCH`] at once, through `nix`'s safe
//! wrappers (no `unsafe` here). coral-mio's loop uses it for the RPC socket,
//! the tokio node for its DNS socket. Both sides own their buffers for the life of
//! the node, so the hot path allocates nothing per datagram.
//!
//! With [`SendQueue::set_gso`] on, a run of queued datagrams of one size
//! to one destination (as a node's RPCs to one peer are) leaves in one
//! `sendmsg` with `UDP_SEGMENT` (generic segmentation offload, Linux 4.18
//! and later): the kernel cuts it into those same datagrams, which is far
//! cheaper than taking each through the stack on its own. Receivers see
//! ordinary datagrams. A kernel or device that refuses it turns it off for
//! the queue, and the datagrams go the plain way.
//!
//! The send side doubles as the loop's bounded queue for sends that would
//! block: datagrams wait in their slots until `sendmmsg` takes them, and a
//! datagram that finds every slot taken while the socket is blocked is
//! dropped and counted (UDP may lose it anyway; the core's retries and
//! timeouts are built for that).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg, sendmsg,
};

/// Datagrams per `recvmmsg`/`sendmmsg` call, and slots in the send queue.
pub const BATCH: usize = 32;

/// Most datagrams in one GSO send (the kernel's limit is 64, `UDP_MAX_SEGMENTS`).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO send: what one UDP datagram can carry.
const GSO_MAX_BYTES: usize = 65_507;

/// Bytes per receive slot. The core's datagrams are far smaller (its
/// encoder caps them at 1200 bytes); a larger datagram arrives truncated to
/// this size and the core counts it as malformed, which it is.
pub const SLOT: usize = 2048;

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// The kernel message headers `recvmmsg` and `sendmmsg` fill: kept apart
/// from the buffers because they hold raw pointers (so they are not
/// `Send`): a single-threaded loop keeps one for ever, a task that may move
/// between threads makes one per call and never holds it across an await.
pub struct Headers(MultiHeaders<SockaddrStorage>);

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Headers")
    }
}

impl Default for Headers {
    fn default() -> Self {
        Self::new()
    }
}

impl Headers {
    /// Headers for [`BATCH`] datagrams.
    pub fn new() -> Self {
        Self(MultiHeaders::preallocate(BATCH, None))
    }
}

/// Receive buffers, reused forever.
pub struct RecvBatch {
    bufs: Box<[[u8; SLOT]; BATCH]>,
    got: [(usize, Option<SocketAddr>); BATCH],
    len: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch").field("len", &self.len).finish()
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    /// Allocates the buffers once.
    pub fn new() -> Self {
        let bufs: Box<[[u8; SLOT]]> = vec![[0u8; SLOT]; BATCH].into_boxed_slice();
        let bufs: Box<[[u8; SLOT]; BATCH]> = match bufs.try_into() {
            Ok(b) => b,
            // The vector was built with exactly BATCH slots.
            Err(_) => unreachable!("BATCH slots"),
        };
        Self {
            bufs,
            got: [(0, None); BATCH],
            len: 0,
        }
    }

    /// One `recvmmsg` on `socket`: returns how many datagrams arrived
    /// (at least one), or the error (`WouldBlock` when none was queued).
    pub fn recv(&mut self, socket: &impl AsRawFd, headers: &mut Headers) -> io::Result<usize> {
        self.len = 0;
        let mut iovs = self.bufs.each_mut().map(|b| [IoSliceMut::new(b)]);
        let results = recvmmsg(
            socket.as_raw_fd(),
            &mut headers.0,
            iovs.iter_mut(),
            // Return what is queued once one datagram is in, even on a
            // blocking socket (the loop's socket never blocks anyway).
            MsgFlags::MSG_WAITFORONE,
            None,
        )
        .map_err(io::Error::from)?;
        for (slot, r) in self.got.iter_mut().zip(results) {
            *slot = (r.bytes.min(SLOT), r.address.as_ref().and_then(to_std));
            self.len += 1;
        }
        Ok(self.len)
    }

    /// The `i`-th datagram of the last [`Self::recv`]: sender and bytes
    /// (`None` past the end, or for a sender that is not IPv4/IPv6).
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        if i >= self.len {
            return None;
        }
        let (n, from) = self.got[i];
        Some((from?, &self.bufs[i][..n]))
    }
}

/// The outcome of a flush.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Datagrams the kernel took.
    pub sent: usize,
    /// Datagrams dropped because the kernel refused them (not for blocking).
    pub failed: usize,
    /// Of those sent, datagrams that left within GSO sends.
    pub gso: usize,
}

/// What one GSO send came to.
enum GsoSend {
    /// The kernel took the whole run.
    Sent,
    /// The socket would block: the run waits for writability.
    Blocked,
    /// The kernel or the device cannot offload: GSO goes off, and the run
    /// goes the plain way.
    Unsupported,
    /// The kernel refused the run for another reason: it goes the plain
    /// way, so that only a datagram at fault is dropped.
    Refused,
}

/// Outgoing datagrams waiting for `sendmmsg`: a bounded queue of [`BATCH`]
/// reusable buffers.
pub struct SendQueue {
    bufs: Vec<Vec<u8>>,
    dests: [Option<SockaddrStorage>; BATCH],
    len: usize,
    blocked: bool,
    /// Runs of equal datagrams to one destination leave as one GSO send.
    gso: bool,
}

impl std::fmt::Debug for SendQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendQueue")
            .field("len", &self.len)
            .field("blocked", &self.blocked)
            .field("gso", &self.gso)
            .finish()
    }
}

impl Default for SendQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl SendQueue {
    /// Allocates the buffers once.
    pub fn new() -> Self {
        Self {
            bufs: (0..BATCH).map(|_| Vec::with_capacity(SLOT)).collect(),
            dests: [None; BATCH],
            len: 0,
            blocked: false,
            gso: false,
        }
    }

    /// Sends runs of datagrams of one size to one destination with
    /// segmentation offload (see the module doc); off by default.
    pub fn set_gso(&mut self, on: bool) {
        self.gso = on;
    }

    /// Whether GSO is on (a kernel that refused it has turned it off).
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// How many queued datagrams from position `at` one GSO send can
    /// carry: those of the first one's size to its destination (the last
    /// may be shorter), within the kernel's limits; 1 when no run starts
    /// there.
    fn gso_run(&self, at: usize) -> usize {
        let size = self.bufs[at].len();
        if size == 0 {
            return 1;
        }
        let (mut run, mut bytes) = (1, size);
        while run < GSO_MAX_SEGMENTS && at + run < self.len {
            let next = self.bufs[at + run].len();
            if self.dests[at + run] != self.dests[at]
                || next == 0
                || next > size
                || bytes + next > GSO_MAX_BYTES
            {
                break;
            }
            run += 1;
            bytes += next;
            if next < size {
                // A shorter datagram can only end a run.
                break;
            }
        }
        run
    }

    /// Sends the first `run` datagrams as one GSO send.
    fn send_gso(&self, socket: &impl AsRawFd, run: usize) -> GsoSend {
        let iovs: [IoSlice<'_>; BATCH] = std::array::from_fn(|i| IoSlice::new(&self.bufs[i]));
        let Ok(seg) = u16::try_from(self.bufs[0].len()) else {
            return GsoSend::Unsupported;
        };
        let cmsg = [ControlMessage::UdpGsoSegments(&seg)];
        loop {
            match sendmsg(
                socket.as_raw_fd(),
                &iovs[..run],
                &cmsg,
                MsgFlags::empty(),
                self.dests[0].as_ref(),
            ) {
                Ok(_) => return GsoSend::Sent,
                Err(Errno::EAGAIN) => return GsoSend::Blocked,
                Err(Errno::EINTR) => {}
                // No UDP_SEGMENT here (old kernel), or a device that cannot
                // checksum it (EIO).
                Err(Errno::EIO | Errno::EINVAL | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP) => {
                    return GsoSend::Unsupported;
                }
                Err(_) => return GsoSend::Refused,
            }
        }
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether every slot is taken.
    pub fn is_full(&self) -> bool {
        self.len == BATCH
    }

    /// Whether the last flush stopped on `WouldBlock` (cleared by a flush
    /// that empties the queue).
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The next free buffer, to be filled and then [`Self::commit`]ted;
    /// `None` when the queue is full.
    pub fn slot(&mut self) -> Option<&mut Vec<u8>> {
        self.bufs.get_mut(self.len).filter(|_| self.len < BATCH)
    }

    /// Queues the first `size` bytes of the buffer [`Self::slot`] returned.
    pub fn commit(&mut self, to: SocketAddr, size: usize) {
        if self.len < BATCH {
            self.bufs[self.len].truncate(size);
            self.dests[self.len] = Some(SockaddrStorage::from(to));
            self.len += 1;
        }
    }

    /// Sends what waits, in as few `sendmmsg` calls as the kernel allows.
    /// Stops on `WouldBlock` (the rest waits for writability); a datagram
    /// the kernel refuses outright (no route, bad address) is dropped.
    pub fn flush(&mut self, socket: &impl AsRawFd, headers: &mut Headers) -> Flushed {
        let mut out = Flushed::default();
        while self.len > 0 {
            let run = if self.gso { self.gso_run(0) } else { 1 };
            // Datagrams that no run takes, up to where one starts, go out
            // together with sendmmsg; so does a run the kernel refused as
            // a whole, so that only the datagram at fault is dropped.
            let mut n = self.len;
            if run > 1 {
                match self.send_gso(socket, run) {
                    GsoSend::Sent => {
                        out.sent += run;
                        out.gso += run;
                        self.take(run);
                        continue;
                    }
                    GsoSend::Blocked => {
                        self.blocked = true;
                        return out;
                    }
                    GsoSend::Unsupported => {
                        self.gso = false;
                        continue;
                    }
                    GsoSend::Refused => n = run,
                }
            } else if self.gso {
                n = 1;
                while n < self.len && self.gso_run(n) == 1 {
                    n += 1;
                }
            }
            let result = {
                let iovs: [[IoSlice<'_>; 1]; BATCH] =
                    std::array::from_fn(|i| [IoSlice::new(&self.bufs[i])]);
                let no_cmsgs: [ControlMessage<'_>; 0] = [];
                sendmmsg(
                    socket.as_raw_fd(),
                    &mut headers.0,
                    iovs[..n].iter(),
                    &self.dests[..n],
                    no_cmsgs,
                    MsgFlags::empty(),
                )
                .map(Iterator::count)
            };
            let done = match result {
                Ok(0) | Err(Errno::EAGAIN) => {
                    self.blocked = true;
                    return out;
                }
                Ok(k) => {
                    out.sent += k;
                    k
                }
                Err(Errno::EINTR) => continue,
                // The first datagram failed: drop it and go on with the rest.
                Err(_) => {
                    out.failed += 1;
                    1
                }
            };
            // The kernel may take fewer than offered: the rest stay.
            self.take(done.clamp(1, n));
        }
        self.blocked = false;
        out
    }

    /// Drops the first `done` datagrams (sent or refused), keeping the
    /// rest in order. Rotating moves the Vec headers, never their heap
    /// buffers.
    fn take(&mut self, done: usize) {
        let len = self.len;
        self.bufs[..len].rotate_left(done);
        self.dests[..len].rotate_left(done);
        self.len = len - done;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        (a, b)
    }

    #[test]
    fn a_batch_goes_out_in_order_and_comes_back_whole() {
        let (a, b) = pair();
        let to = b.local_addr().unwrap();
        let mut q = SendQueue::new();
        for i in 0..BATCH {
            let buf = q.slot().unwrap();
            buf.clear();
            buf.extend_from_slice(format!("datagram {i}").as_bytes());
            let size = buf.len();
            q.commit(to, size);
        }
        assert!(q.is_full() && q.slot().is_none());
        let f = q.flush(&a, &mut Headers::new());
        assert_eq!(
            f,
            Flushed {
                sent: BATCH,
                failed: 0,
                gso: 0
            }
        );
        assert!(q.is_empty() && !q.is_blocked());

        let mut r = RecvBatch::new();
        let mut seen = Vec::new();
        while seen.len() < BATCH {
            let n = r.recv(&b, &mut Headers::new()).unwrap();
            for i in 0..n {
                let (from, bytes) = r.get(i).unwrap();
                assert_eq!(from, a.local_addr().unwrap());
                seen.push(String::from_utf8(bytes.to_vec()).unwrap());
            }
            assert!(r.get(n).is_none());
        }
        let want: Vec<String> = (0..BATCH).map(|i| format!("datagram {i}")).collect();
        assert_eq!(seen, want);
    }

    fn queue(q: &mut SendQueue, to: SocketAddr, bytes: &[u8]) {
        let buf = q.slot().unwrap();
        buf.clear();
        buf.extend_from_slice(bytes);
        q.commit(to, bytes.len());
    }

    /// Every datagram `b` receives until 300 ms pass without one, as bytes.
    fn drain(b: &UdpSocket) -> Vec<Vec<u8>> {
        b.set_read_timeout(Some(std::time::Duration::from_millis(300)))
            .unwrap();
        let (mut r, mut out) = (RecvBatch::new(), Vec::new());
        while let Ok(n) = r.recv(b, &mut Headers::new()) {
            out.extend((0..n).map(|i| r.get(i).unwrap().1.to_vec()));
        }
        out
    }

    #[test]
    fn a_run_to_one_peer_leaves_as_one_gso_send_and_arrives_as_datagrams() {
        let (a, b) = pair();
        let to = b.local_addr().unwrap();
        let mut q = SendQueue::new();
        q.set_gso(true);
        // 31 of 120 bytes, then a shorter one to end the run.
        let mut sent: Vec<Vec<u8>> = (0..BATCH - 1)
            .map(|i| {
                let mut d = vec![i as u8; 120];
                d[0] = 0xc0;
                d
            })
            .collect();
        sent.push(vec![0xee; 33]);
        for d in &sent {
            queue(&mut q, to, d);
        }
        assert_eq!(q.gso_run(0), BATCH);
        let f = q.flush(&a, &mut Headers::new());
        assert_eq!(
            f,
            Flushed {
                sent: BATCH,
                failed: 0,
                gso: BATCH
            },
            "one GSO send carried them all"
        );
        assert!(q.is_empty() && q.gso(), "this kernel takes UDP_SEGMENT");
        assert_eq!(drain(&b), sent, "the same datagrams, in order");
    }

    #[test]
    fn runs_break_at_a_new_peer_or_size_and_everything_arrives() {
        let (a, b) = pair();
        let (_, c) = pair();
        let (tb, tc) = (b.local_addr().unwrap(), c.local_addr().unwrap());
        let mut q = SendQueue::new();
        q.set_gso(true);
        // b: 3 × 50; c: 1; b: 2 × 40 then 60 (longer: a new run); c: 0 bytes.
        let plan: [(SocketAddr, u8, usize); 8] = [
            (tb, 1, 50),
            (tb, 2, 50),
            (tb, 3, 50),
            (tc, 4, 50),
            (tb, 5, 40),
            (tb, 6, 40),
            (tb, 7, 60),
            (tc, 8, 0),
        ];
        for (to, tag, len) in plan {
            queue(&mut q, to, &vec![tag; len]);
        }
        let runs: Vec<usize> = (0..plan.len()).map(|i| q.gso_run(i)).collect();
        assert_eq!(runs, [3, 2, 1, 1, 2, 1, 1, 1]);
        assert_eq!(
            q.flush(&a, &mut Headers::new()),
            Flushed {
                sent: 8,
                failed: 0,
                gso: 5
            }
        );
        let tags = |v: Vec<Vec<u8>>| -> Vec<(u8, usize)> {
            v.iter()
                .map(|d| (d.first().copied().unwrap_or(0), d.len()))
                .collect()
        };
        assert_eq!(
            tags(drain(&b)),
            [(1, 50), (2, 50), (3, 50), (5, 40), (6, 40), (7, 60)]
        );
        assert_eq!(tags(drain(&c)), [(4, 50), (0, 0)]);
    }

    #[test]
    fn a_run_the_kernel_refuses_loses_only_its_own_datagrams() {
        let (a, b) = pair();
        let mut q = SendQueue::new();
        q.set_gso(true);
        // A run to an IPv6 address, refused on this IPv4 socket, then a
        // run to b.
        for to in ["[::1]:9".parse().unwrap(); 3] {
            queue(&mut q, to, &[1; 10]);
        }
        for _ in 0..2 {
            queue(&mut q, b.local_addr().unwrap(), &[2; 10]);
        }
        assert_eq!(
            q.flush(&a, &mut Headers::new()),
            Flushed {
                sent: 2,
                failed: 3,
                gso: 2
            }
        );
        assert!(q.gso(), "a refused address is no reason to stop GSO");
        assert_eq!(drain(&b), vec![vec![2u8; 10]; 2]);
    }

    #[test]
    fn an_oversized_datagram_arrives_truncated_to_a_slot() {
        let (a, b) = pair();
        a.send_to(&vec![7u8; 5000], b.local_addr().unwrap())
            .unwrap();
        let mut r = RecvBatch::new();
        assert_eq!(r.recv(&b, &mut Headers::new()).unwrap(), 1);
        assert_eq!(r.get(0).unwrap().1.len(), SLOT);
    }

    #[test]
    fn an_empty_socket_would_block() {
        let (_, b) = pair();
        b.set_nonblocking(true).unwrap();
        let e = RecvBatch::new().recv(&b, &mut Headers::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_refused_datagram_is_dropped_and_the_rest_sent() {
        let (a, b) = pair();
        let mut q = SendQueue::new();
        // An IPv6 destination on an IPv4 socket is refused by the kernel.
        for to in ["[::1]:9".parse().unwrap(), b.local_addr().unwrap()] {
            let buf = q.slot().unwrap();
            buf.clear();
            buf.push(1);
            q.commit(to, 1);
        }
        assert_eq!(
            q.flush(&a, &mut Headers::new()),
            Flushed {
                sent: 1,
                failed: 1,
                gso: 0
            }
        );
        let mut r = RecvBatch::new();
        assert_eq!(r.recv(&b, &mut Headers::new()).unwrap(), 1);
    }
}
