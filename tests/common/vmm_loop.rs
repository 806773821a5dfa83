// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A VMM's `EventManager` on a thread of its own, reached through its remote endpoint: the
//! loop the tests hand `PciSubscriber`s to. Included with `#[path]` by the tests that need
//! it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use event_manager::{EventManager, MutEventSubscriber, RemoteEndpoint, SubscriberId};
use vfio_user_client::pci::PciSubscriber;

type Subscriber = Box<dyn MutEventSubscriber + Send>;

/// An event manager running on its own thread until dropped.
pub struct Loop {
    endpoint: RemoteEndpoint<Subscriber>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Loop {
    /// Starts the loop.
    pub fn start() -> Loop {
        let mut manager = EventManager::<Subscriber>::new().unwrap();
        let endpoint = manager.remote_endpoint();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            while !stopping.load(Ordering::Acquire) {
                manager.run().unwrap();
            }
        });
        Loop {
            endpoint,
            stop,
            thread: Some(thread),
        }
    }

    /// Registers a device's subscriber.
    pub fn add(&self, subscriber: PciSubscriber) -> SubscriberId {
        let subscriber: Subscriber = Box::new(subscriber);
        self.endpoint
            .call_blocking(move |ops| Ok::<_, event_manager::Error>(ops.add_subscriber(subscriber)))
            .unwrap()
    }

    /// Removes a subscriber (after its device is detached).
    pub fn remove(&self, id: SubscriberId) {
        self.endpoint
            .call_blocking(move |ops| ops.remove_subscriber(id).map(drop))
            .unwrap();
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.endpoint.kick();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
