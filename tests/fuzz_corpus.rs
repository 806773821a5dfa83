// Copyright 2026 The vfio-user-client Authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The fuzz targets' corpus replayed as ordinary tests, on stable: every file of
//! `fuzz/corpus/<target>/` and every encoder-made seed goes through the same body the
//! cargo-fuzz target runs (`fuzz/src/`, included here as a module).
//!
//! `cargo test --test fuzz_corpus -- --ignored write_seeds` (re)writes the seeds into the
//! corpus directories.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use targets::TARGETS;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn body(target: &str) -> targets::Body {
    TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, body)| *body)
        .unwrap_or_else(|| panic!("no target {target}"))
}

/// Runs every input through its target's body and names the ones that panicked.
fn replay(inputs: impl IntoIterator<Item = (&'static str, String, Vec<u8>)>) -> usize {
    let mut failed = Vec::new();
    let mut count = 0;
    for (target, name, input) in inputs {
        count += 1;
        let run = body(target);
        if panic::catch_unwind(AssertUnwindSafe(|| run(&input))).is_err() {
            failed.push(format!("{target}/{name}"));
        }
    }
    assert!(failed.is_empty(), "inputs that fail: {failed:?}");
    count
}

#[test]
fn seeds_pass_every_target() {
    let seeds = targets::seeds::all();
    for (target, _) in TARGETS {
        assert!(
            seeds.iter().any(|(t, _, _)| t == target),
            "no seed for {target}"
        );
    }
    replay(seeds);
}

#[test]
fn corpus_replays() {
    let mut inputs = Vec::new();
    for (target, _) in TARGETS {
        let dir = corpus_dir(target);
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let before = inputs.len();
        for entry in entries {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            inputs.push((*target, name, fs::read(&path).unwrap()));
        }
        assert!(inputs.len() > before, "{} is empty", dir.display());
    }
    let count = replay(inputs);
    println!("replayed {count} corpus files");
}

#[test]
#[ignore = "writes the encoder-made seeds into fuzz/corpus"]
fn write_seeds() {
    for (target, name, input) in targets::seeds::all() {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), input).unwrap();
    }
}
