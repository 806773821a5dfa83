// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A sample server that can be killed and started again on the same socket path, as a
//! device process restarted by its supervisor: each start serves a fresh device (it comes
//! back empty), or another device altogether.

use std::path::{Path, PathBuf};

use vmm_sys_util::tempdir::TempDir;

use crate::{Device, Probe, Server, ServerConfig, ServerHandle};

/// Makes the device each start serves.
pub type DeviceFactory = Box<dyn Fn() -> Box<dyn Device> + Send>;

/// A restartable sample server on a fixed socket path.
pub struct RestartableServer {
    path: PathBuf,
    config: ServerConfig,
    make: DeviceFactory,
    running: Option<ServerHandle>,
    probe: Option<Probe>,
    starts: u32,
    _dir: TempDir,
}

impl std::fmt::Debug for RestartableServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestartableServer")
            .field("path", &self.path)
            .field("running", &self.running.is_some())
            .field("starts", &self.starts)
            .finish_non_exhaustive()
    }
}

impl RestartableServer {
    /// Starts a server with `config` serving `make()` on a socket in a new temporary
    /// directory.
    pub fn start(
        config: ServerConfig,
        make: impl Fn() -> Box<dyn Device> + Send + 'static,
    ) -> RestartableServer {
        let dir = TempDir::new_with_prefix(std::env::temp_dir().join("vfio-user-restart-"))
            .expect("temporary directory");
        let path = dir.as_path().join("sock");
        let mut s = RestartableServer {
            path,
            config,
            make: Box::new(make),
            running: None,
            probe: None,
            starts: 0,
            _dir: dir,
        };
        s.restart();
        s
    }

    /// The socket path, the same across restarts.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A probe into the running server (the last one started).
    pub fn probe(&self) -> Probe {
        self.probe.clone().expect("a server was started")
    }

    /// How many times a server was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Kills the running server: the connection is shut down and the socket removed, so
    /// that nobody listens until the next start.
    pub fn kill(&mut self) {
        if let Some(h) = self.running.take() {
            h.stop();
        }
    }

    /// Kills the running server (if any) and starts a new one with a fresh device.
    pub fn restart(&mut self) {
        let device = (self.make)();
        self.restart_with(device);
    }

    /// Kills the running server (if any) and starts a new one serving `device`.
    pub fn restart_with(&mut self, device: Box<dyn Device>) {
        self.kill();
        let server = Server::new(self.config.clone(), device);
        self.probe = Some(server.probe());
        self.running = Some(server.listen(&self.path).expect("listen"));
        self.starts += 1;
    }
}
