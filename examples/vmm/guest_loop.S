# Copyright 2026 The vfio-user-client Authors.
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# The migrating guest of examples/vmm (`--migrate`): 16-bit real mode, loaded at 0x1000.
# Through pci_setup.inc it finds the DMA engine, places BAR0 at 0xd0000, programs MSI-X
# vector 0 and enables memory decoding, bus mastering and MSI-X. It sets the engine's
# burst to 64 bytes (a copy then takes several messages) and the copy's registers, and
# reads the status once (register writes may be posted, and the doorbell, an ioeventfd
# with KVM, bypasses them: a read flushes them, as a PCI driver does). Then, 64 times: it
# fills 256 bytes at 0x2000 with (iteration << 16 | offset) dwords, rings the doorbell
# (copy 0x2000 -> 0x3000), reads the status once (the server takes the doorbell), halts (a
# yield point: the VMM may migrate it there, mid-copy), polls the status until done,
# compares the copy dword by dword and stores the iterations done at 0x514. At the end it
# stores 0x600d at 0x500; a bad status is 0xbad2 (status at 0x50c), a bad copy 0xbad3
# (iteration at 0x518).
#
# Rebuild the bytes in vmm/migrate.rs (GUEST_LOOP_CODE), in this directory, with:
#   as --32 -o guest_loop.o guest_loop.S
#   ld -m elf_i386 -Ttext=0x1000 --oformat binary -o guest_loop.bin guest_loop.o

.code16
.intel_syntax noprefix
.globl _start
_start:
    .include "pci_setup.inc"
    mov dword ptr [0x28], 64
    mov dword ptr [0x00], 0x2000
    mov dword ptr [0x04], 0
    mov dword ptr [0x08], 0x3000
    mov dword ptr [0x0c], 0
    mov dword ptr [0x10], 256
    mov dword ptr [0x14], 0
    mov eax, dword ptr [0x1c]
    xor ax, ax
    mov ds, ax
    xor ebp, ebp
iteration:
    xor bx, bx
fill:
    mov eax, ebp
    shl eax, 16
    mov ax, bx
    mov dword ptr [bx+0x2000], eax
    add bx, 4
    cmp bx, 256
    jne fill
    mov ax, 0xd000
    mov ds, ax
    mov dword ptr [0x18], 1
    mov eax, dword ptr [0x1c]
    xor ax, ax
    mov ds, ax
    hlt
wait:
    mov ax, 0xd000
    mov ds, ax
    mov eax, dword ptr [0x1c]
    xor bx, bx
    mov ds, bx
    cmp eax, 1
    je check
    cmp eax, 3
    je wait
    mov dword ptr [0x50c], eax
    mov word ptr [0x500], 0xbad2
    hlt
check:
    xor bx, bx
compare:
    mov eax, dword ptr [bx+0x2000]
    cmp eax, dword ptr [bx+0x3000]
    jne bad_copy
    add bx, 4
    cmp bx, 256
    jne compare
    inc ebp
    mov dword ptr [0x514], ebp
    cmp ebp, 64
    jne iteration
    mov word ptr [0x500], 0x600d
    hlt
bad_copy:
    mov dword ptr [0x518], ebp
    mov word ptr [0x500], 0xbad3
    hlt
