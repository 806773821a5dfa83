// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Peers on socket paths: the sample GPIO server, listeners run by a script (including
//! peers that are not vfio-user servers at all), and paths nobody listens on.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use vmm_sys_util::tempdir::TempDir;

use crate::{GpioDevice, Server, ServerConfig, ServerHandle};

/// A short deadline for peers that never answer.
pub const SHORT: Duration = Duration::from_millis(200);

/// The sample GPIO server with `config`, on a socket in a new temporary directory.
pub fn sample(config: ServerConfig) -> ServerHandle {
    let (device, _) = GpioDevice::new(Default::default()).expect("GPIO device");
    Server::new(config, Box::new(device))
        .listen_temp()
        .expect("sample server")
}

/// The socket path of a listening server.
pub fn path_of(h: &ServerHandle) -> PathBuf {
    h.socket_path().expect("socket path").to_path_buf()
}

/// A path as a command-line argument.
pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// A socket path that does not exist (in a temporary directory that lives as long as the
/// returned guard).
pub fn missing_socket() -> (TempDir, PathBuf) {
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("vfio-user-missing-"))
        .expect("temporary directory");
    let path = dir.as_path().join("sock");
    (dir, path)
}

/// A socket file nobody listens on (bound, then the listener closed).
pub fn dead_socket() -> (TempDir, PathBuf) {
    let (dir, path) = missing_socket();
    drop(UnixListener::bind(&path).expect("bind"));
    (dir, path)
}

/// A listener that runs `script` on each accepted connection, one after another, until it
/// is dropped.
#[derive(Debug)]
pub struct ScriptedServer {
    /// Where it listens.
    pub path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _dir: TempDir,
}

impl ScriptedServer {
    /// Binds a socket in a new temporary directory and serves it with `script`.
    pub fn start(script: fn(UnixStream)) -> ScriptedServer {
        let (dir, path) = missing_socket();
        let listener = UnixListener::bind(&path).expect("bind");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = thread::spawn(move || {
            for s in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(s) = s {
                    script(s);
                }
            }
        });
        ScriptedServer {
            path,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept; the loop sees the flag.
        drop(UnixStream::connect(&self.path));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads the request and answers like a web server, then hangs up.
pub fn http_peer(mut s: UnixStream) {
    let mut buf = [0u8; 256];
    let _ = s.read(&mut buf);
    let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
}

/// Reads the request and never answers (until the client gives up).
pub fn silent_peer(mut s: UnixStream) {
    let mut buf = [0u8; 4096];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

/// Closes at once.
pub fn closing_peer(s: UnixStream) {
    drop(s);
}
