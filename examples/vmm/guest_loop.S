# Copyright 2026 The vfio-user-client Authors.
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# The migrating guest of examples/vmm (`--migrate`): 16-bit real mode, loaded at 0x1000.
# It finds the DMA engine as guest.S does, places BAR0 at 0xd0000, programs MSI-X vector 0,
# enables memory decoding, bus mastering and MSI-X, sets the engine's burst to 64 bytes
# (a copy then takes several messages) and the copy's registers, and reads the status once
# (register writes may be posted, and the doorbell, an ioeventfd with KVM, bypasses them: a
# read flushes them, as a PCI driver does). Then, 64 times: it fills 256 bytes at 0x2000 with
# (iteration << 16 | offset) dwords, rings the doorbell (copy 0x2000 -> 0x3000), reads the
# status once (the server takes the doorbell), halts (a yield point: the VMM may migrate
# it there, mid-copy), polls the status until done, compares the copy dword by dword and
# stores the iterations done at 0x514. At the end it stores 0x600d at 0x500; a bad status
# is 0xbad2 (status at 0x50c), a bad copy 0xbad3 (iteration at 0x518).
#
# Rebuild the bytes in vmm/migrate.rs (GUEST_LOOP_CODE) with:
#   as --32 -o guest_loop.o guest_loop.S
#   ld -m elf_i386 -Ttext=0x1000 --oformat binary -o guest_loop.bin guest_loop.o

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
