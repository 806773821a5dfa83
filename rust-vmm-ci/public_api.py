#!/usr/bin/env python3
# Copyright 2026 The vfio-user-client Authors.
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Counts and lists the client crate's public API from rustdoc's JSON output.

Usage: rust-vmm-ci/public_api.sh [--list]   (needs the nightly toolchain)

Items are what a user can name: modules, structs, enums, traits, functions, constants,
statics and type aliases reachable through public modules and re-exports (each counted
once). Methods are the public functions of inherent impls of those types.
"""
import json
import sys

path, listing = sys.argv[1], "--list" in sys.argv[2:]
with open(path) as f:
    doc = json.load(f)
index = doc["index"]

items, methods, seen = {}, {}, set()


def item(id_):
    return index.get(str(id_)) or index.get(id_)


def walk(id_, prefix):
    it = item(id_)
    if it is None or it.get("crate_id") != 0:
        return
    kind, inner = next(iter(it["inner"].items()))
    if kind == "use":
        target = inner.get("id")
        if target is None:
            return
        name = inner["name"]
        tgt = item(target)
        if tgt is None:
            return
        if inner.get("is_glob"):
            for child in next(iter(tgt["inner"].values())).get("items", []):
                walk(child, prefix)
            return
        walk_named(target, prefix + [name])
        return
    if it.get("visibility") != "public":
        return
    walk_named(id_, prefix + [it["name"]])


def walk_named(id_, path):
    it = item(id_)
    kind, inner = next(iter(it["inner"].items()))
    if id_ in seen:
        return
    seen.add(id_)
    items["::".join(path)] = kind
    if kind == "module":
        for child in inner["items"]:
            walk(child, path)
    for impl_id in inner.get("impls", []) if isinstance(inner, dict) else []:
        impl = item(impl_id)
        if impl is None:
            continue
        imp = impl["inner"]["impl"]
        if imp.get("trait") is not None or imp.get("is_synthetic") or imp.get("blanket_impl"):
            continue
        for m in imp["items"]:
            mi = item(m)
            if mi and mi.get("visibility") == "public" and "function" in mi["inner"]:
                methods["::".join(path) + "::" + mi["name"]] = "method"
    if kind == "trait":
        for m in inner["items"]:
            mi = item(m)
            if mi:
                methods["::".join(path) + "::" + mi["name"]] = "trait item"


root = item(doc["root"])
for child in root["inner"]["module"]["items"]:
    walk(child, [root["name"]])

kinds = {}
for k in items.values():
    kinds[k] = kinds.get(k, 0) + 1
if listing:
    for name, kind in sorted(items.items()):
        print(f"{kind:10} {name}")
    for name, kind in sorted(methods.items()):
        print(f"{kind:10} {name}")
print(f"public items: {len(items)} ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}); "
      f"methods and trait items: {len(methods)}")
