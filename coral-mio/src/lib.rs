//! The hand-written mio (epoll) adapter for coral-core (filled in by the mio issue).
