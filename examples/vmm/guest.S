# Copyright 2026 The vfio-user-client Authors.
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# The guest of examples/vmm: 16-bit real mode, loaded at 0x1000. It finds the DMA engine
# through PCI config mechanism #1, places BAR0 at 0xd0000 and BAR2 (the engine's mappable
# buffer) at 0xe0000, walks the capability list to MSI-X, programs vector 0 in the table,
# enables memory decoding and MSI-X, copies 64 bytes from 0x2000 to 0x3000 with the engine
# (the doorbell write at 0xd0018 is an ioeventfd with KVM), stores the status at 0x50c,
# writes 0x5a17cafe to the buffer at 0xe0010 and stores what it reads back there at 0x510
# (a memory slot with KVM), and stores 0x600d at 0x500.
#
# Rebuild the bytes in vmm/main.rs (GUEST_CODE) with:
#   as --32 -o guest.o guest.S
#   ld -m elf_i386 -Ttext=0x1000 --oformat binary -o guest.bin guest.o

.code16
.intel_syntax noprefix
.globl _start
_start:
    cli
    xor ax, ax
    mov ds, ax
    xor ebx, ebx
scan:
    mov eax, ebx
    shl eax, 11
    or eax, 0x80000000
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    cmp eax, 0x0d4a494f
    je found
    inc ebx
    cmp ebx, 32
    jne scan
    mov word ptr [0x500], 0xdead
    hlt
found:
    mov dword ptr [0x504], ebx
    mov ecx, ebx
    shl ecx, 11
    or ecx, 0x80000000
    mov eax, ecx
    or eax, 0x10
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    mov eax, 0x000d0000
    out dx, eax
    mov eax, ecx
    or eax, 0x18
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    mov eax, 0x000e0000
    out dx, eax
    mov eax, ecx
    or eax, 0x34
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    and eax, 0xfc
    mov esi, eax
cap_loop:
    test esi, esi
    jz no_msix
    mov eax, ecx
    or eax, esi
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    cmp al, 0x11
    je msix_found
    movzx esi, ah
    and esi, 0xfc
    jmp cap_loop
no_msix:
    mov word ptr [0x500], 0xbad1
    hlt
msix_found:
    mov dword ptr [0x508], esi
    mov eax, ecx
    or eax, esi
    add eax, 4
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    and eax, 0xfffffff8
    mov edi, eax
    mov eax, ecx
    or eax, 4
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    mov ax, 0x0006
    out dx, ax
    mov ax, 0xd000
    mov ds, ax
    mov dword ptr [di], 0xfee00000
    mov dword ptr [di+4], 0
    mov dword ptr [di+8], 0x31
    mov dword ptr [di+12], 0
    xor ax, ax
    mov ds, ax
    mov eax, ecx
    or eax, esi
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfe
    mov ax, 0x8000
    out dx, ax
    mov ax, 0xd000
    mov ds, ax
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
