// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The event-manager side of a connection: the [`ConnectionSubscriber`] a VMM registers,
//! and the [`EventLoop`] that runs it on a thread of its own for everyone else.

use std::fmt;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::twin::TwinSubscriber;
use super::{Error, Inner};

/// Everything a connection needs watched: its main socket and, in twin-socket mode, the
/// second socket on which the server sends its requests. Register it in the VMM's
/// [`EventManager`] (see [`Connection::connect_with_subscriber`](super::Connection::connect_with_subscriber)).
pub struct ConnectionSubscriber {
    main: MainSubscriber,
    twin: Option<TwinSubscriber>,
}

impl fmt::Debug for ConnectionSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSubscriber")
            .field("main", &self.main)
            .field("twin", &self.twin)
            .finish()
    }
}

impl ConnectionSubscriber {
    /// Both subscribers of a connection; `twin` is `None` without twin-socket mode.
    pub(super) fn new(main: MainSubscriber, twin: Option<TwinSubscriber>) -> Self {
        ConnectionSubscriber { main, twin }
    }

    /// Removes every registration this subscriber made (a reconnected device's subscriber
    /// hands its place to the new connection's).
    pub(crate) fn retire(&mut self, ops: &mut EventOps) {
        self.main.stop_watching(ops);
        if let Some(t) = &mut self.twin {
            t.stop_watching(ops);
        }
    }
}

impl MutEventSubscriber for ConnectionSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        self.main.init(ops);
        if let Some(t) = &mut self.twin {
            t.init(ops);
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match &mut self.twin {
            Some(t) if events.fd() == t.fd() => t.process(events, ops),
            _ => self.main.process(events, ops),
        }
    }
}

/// Drives the main socket from an event loop: drains the send queue when the socket becomes
/// writable (`EPOLLOUT` is watched only while the queue is not empty), reads server requests
/// and replies while no caller waits, and notices a hang-up.
///
/// It watches the connection's private epoll set rather than the socket itself, so that
/// callers can stop it from being woken by the replies they read themselves.
pub(super) struct MainSubscriber {
    inner: Arc<Inner>,
    out_armed: bool,
    watching: bool,
}

impl fmt::Debug for MainSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MainSubscriber")
            .field("out_armed", &self.out_armed)
            .field("watching", &self.watching)
            .finish_non_exhaustive()
    }
}

impl MainSubscriber {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        MainSubscriber {
            inner,
            out_armed: false,
            watching: false,
        }
    }

    fn stop_watching(&mut self, ops: &mut EventOps) {
        if self.out_armed {
            let _ = ops.remove(Events::new(&self.inner.sock, EventSet::OUT));
            self.out_armed = false;
        }
        if self.watching {
            let _ = ops.remove(Events::new(&self.inner.watch, EventSet::IN));
            let _ = ops.remove(Events::new(&self.inner.kick, EventSet::IN));
            self.watching = false;
        }
    }

    /// A one-shot event of the disarmed entry (a hang-up or error while callers wait; or
    /// data that came while the entry was being armed again): takes it from the set, reads
    /// what there is if no caller does, and arms the entry again if no caller waits.
    fn collect_and_read(&mut self) {
        match self.inner.watch.collect() {
            Ok(true) => {
                self.inner.read_idle();
                if let Err(e) = self.inner.watch.rearm() {
                    self.inner.fail(super::error::io_reason(&e));
                }
            }
            Ok(false) => {}
            Err(e) => self.inner.fail(super::error::io_reason(&e)),
        }
    }
}

impl MutEventSubscriber for MainSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.inner.watch, EventSet::IN)) {
            log::error!("cannot watch the vfio-user socket's epoll set: {e:?}");
            return;
        }
        if let Err(e) = ops.add(Events::new(&self.inner.kick, EventSet::IN)) {
            log::error!("cannot watch the vfio-user kick eventfd: {e:?}");
            let _ = ops.remove(Events::new(&self.inner.watch, EventSet::IN));
            return;
        }
        self.watching = true;
        // Anything queued before registration. (Data received before it is reported by
        // the epoll set, which was armed all along unless a caller waits.)
        let _ = self.inner.kick.write(1);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.inner.kick.as_raw_fd() {
            let _ = self.inner.kick.read();
        } else if events.fd() == self.inner.watch.as_raw_fd() {
            if self.inner.watch.level_triggered() {
                // The socket has data (or hung up), and stays reported while it has.
                self.inner.read_idle();
            } else {
                self.collect_and_read();
            }
        }
        // Otherwise the socket itself: writable, or hung up / in error (reported whatever
        // was asked for); the send below finds out which.
        if !self.inner.connected.load(Ordering::Acquire) {
            self.stop_watching(ops);
            return;
        }
        match self.inner.drain_send_queue() {
            Ok(true) if self.out_armed => {
                if ops
                    .remove(Events::new(&self.inner.sock, EventSet::OUT))
                    .is_ok()
                {
                    self.out_armed = false;
                }
            }
            Ok(false) if !self.out_armed => {
                if ops
                    .add(Events::new(&self.inner.sock, EventSet::OUT))
                    .is_ok()
                {
                    self.out_armed = true;
                }
            }
            Ok(_) => {}
            Err(reason) => {
                self.inner.fail(reason);
                self.stop_watching(ops);
            }
        }
    }
}

struct Stopper {
    evt: Arc<EventFd>,
    stop: Arc<AtomicBool>,
}

impl MutEventSubscriber for Stopper {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&*self.evt, EventSet::IN)) {
            log::error!("cannot watch the event loop's stop eventfd: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.stop.store(true, Ordering::Release);
    }
}

/// An event loop on its own thread, for users that do not own an [`EventManager`] (tools,
/// tests, [`Connection::connect`](super::Connection::connect)). Stops and joins the thread
/// when dropped.
pub(crate) struct EventLoop {
    evt: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLoop").finish_non_exhaustive()
    }
}

type BoxedSubscriber = Box<dyn MutEventSubscriber + Send>;

impl EventLoop {
    /// Starts a thread running an event manager with `subscriber` registered.
    pub(crate) fn spawn(
        subscriber: impl MutEventSubscriber + Send + 'static,
    ) -> Result<EventLoop, Error> {
        let evt = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Io {
            what: "creating the event loop's stop eventfd",
            source,
        })?);
        let stop = Arc::new(AtomicBool::new(false));
        let stopper = Stopper {
            evt: Arc::clone(&evt),
            stop: Arc::clone(&stop),
        };
        let mut manager = EventManager::<BoxedSubscriber>::new().map_err(|e| Error::Io {
            what: "creating the event manager",
            source: std::io::Error::other(format!("{e:?}")),
        })?;
        manager.add_subscriber(Box::new(stopper));
        manager.add_subscriber(Box::new(subscriber));
        let thread = std::thread::Builder::new()
            .name("vfio-user-loop".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    if let Err(e) = manager.run() {
                        log::error!("vfio-user event loop failed: {e:?}");
                        break;
                    }
                }
            })
            .map_err(|source| Error::Io {
                what: "spawning the event loop thread",
                source,
            })?;
        Ok(EventLoop {
            evt,
            thread: Some(thread),
        })
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        let _ = self.evt.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
