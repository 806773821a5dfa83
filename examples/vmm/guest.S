# Copyright 2026 The vfio-user-client Authors.
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# The guest of examples/vmm: 16-bit real mode, loaded at 0x1000. Through pci_setup.inc it
# finds the DMA engine, places BAR0 at 0xd0000 and BAR2 (the engine's mappable buffer) at
# 0xe0000, programs MSI-X vector 0 and enables memory decoding, bus mastering and MSI-X.
# Then it copies 64 bytes from 0x2000 to 0x3000 with the engine (the doorbell write at
# 0xd0018 is an ioeventfd with KVM), stores the status at 0x50c, writes 0x5a17cafe to the
# buffer at 0xe0010 and stores what it reads back there at 0x510 (a memory slot with KVM),
# and stores 0x600d at 0x500.
#
# Rebuild the bytes in vmm/main.rs (GUEST_CODE), in this directory, with:
#   as --32 -o guest.o guest.S
#   ld -m elf_i386 -Ttext=0x1000 --oformat binary -o guest.bin guest.o

.code16
.intel_syntax noprefix
.set BAR2_ADDRESS, 0x000e0000
.globl _start
_start:
    .include "pci_setup.inc"
    mov dword ptr [0x00], 0x2000
    mov dword ptr [0x04], 0
    mov dword ptr [0x08], 0x3000
    mov dword ptr [0x0c], 0
    mov dword ptr [0x10], 64
    mov dword ptr [0x14], 0
    mov dword ptr [0x18], 1
    mov eax, dword ptr [0x1c]
    xor bx, bx
    mov ds, bx
    mov dword ptr [0x50c], eax
    mov ax, 0xe000
    mov ds, ax
    mov dword ptr [0x10], 0x5a17cafe
    mov eax, dword ptr [0x10]
    xor bx, bx
    mov ds, bx
    mov dword ptr [0x510], eax
    mov word ptr [0x500], 0x600d
    hlt
