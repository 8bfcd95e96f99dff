//! The boot program the boot tests put into every image: a 512-byte real-mode boot sector,
//! written out as machine code with one comment per instruction (no assembler needed).
//!
//! What it does, in order:
//!
//! 1. Sets DS = ES = SS = 0 and a stack below 0x7C00, and keeps the BIOS boot drive (DL).
//! 2. Prints [`BANNER`] on the first serial port by writing straight to the UART's transmit
//!    register at I/O port 0x3F8 (QEMU's 16550 needs no set-up for this).
//! 3. For each 64-bit LBA in the probe table (count at [`COUNT_AT`], entries at
//!    [`TABLE_AT`]): copies the LBA into a disk address packet and reads that one sector to
//!    0000:8000 with BIOS int 13h AH=42h (extended read, so any LBA a 64-bit field holds is
//!    reachable, not only the first 8 GiB that CHS addressing covers), then prints the first
//!    16 bytes of the sector followed by a newline.
//! 4. Writes 0x10 to the isa-debug-exit port 0xF4: QEMU exits with status (0x10 << 1) | 1 =
//!    33. A failed read prints "ERR" and exits with (0x11 << 1) | 1 = 35 instead.
//!
//! Addresses below are absolute (the BIOS loads the sector at 0000:7C00); offsets in the
//! comments are offsets into the sector.

/// Where the BIOS loads the boot sector.
pub const LOAD_ADDRESS: u16 = 0x7C00;
/// Sector offset of the probe count byte (patched by the test).
pub const COUNT_AT: usize = 0x75;
/// Sector offset of the probe table: `COUNT` little-endian u64 LBAs.
pub const TABLE_AT: usize = 0x100;
/// Most probes the table holds (it ends before the boot signature).
pub const MAX_PROBES: usize = (0x1FE - TABLE_AT) / 8;
/// Bytes of each read sector the program prints.
pub const PRINTED_BYTES: usize = 16;
/// The first line the program prints.
pub const BANNER: &str = "vdisk boot test\n";
/// The value written to isa-debug-exit on success, and QEMU's resulting exit status.
pub const EXIT_OK: i32 = (0x10 << 1) | 1;
/// QEMU's exit status when a BIOS read failed.
pub const EXIT_READ_ERROR: i32 = (0x11 << 1) | 1;

/// The code, from offset 0 of the sector.
#[rustfmt::skip]
const CODE: [u8; 0x74] = [
    // 00: start
    0xFA,                   // 00 cli
    0x31, 0xC0,             // 01 xor ax, ax
    0x8E, 0xD8,             // 03 mov ds, ax
    0x8E, 0xC0,             // 05 mov es, ax
    0x8E, 0xD0,             // 07 mov ss, ax
    0xBC, 0x00, 0x7C,       // 09 mov sp, 0x7C00
    0xFB,                   // 0C sti
    0xFC,                   // 0D cld (lodsb/movsw count upwards)
    0x88, 0x16, 0x74, 0x7C, // 0E mov [DRIVE], dl          ; DRIVE = 0x7C74
    0xBE, 0x90, 0x7C,       // 12 mov si, BANNER           ; BANNER = 0x7C90
    0xE8, 0x4A, 0x00,       // 15 call puts                ; 0x18 + 0x4A = 0x62
    0xBF, 0x00, 0x7D,       // 18 mov di, TABLE            ; TABLE = 0x7D00
    0x8A, 0x0E, 0x75, 0x7C, // 1B mov cl, [COUNT]          ; COUNT = 0x7C75
    0x30, 0xED,             // 1F xor ch, ch
    // 21: next_probe (DI = table entry, CX = probes left)
    0x51,                   // 21 push cx
    0x89, 0xFE,             // 22 mov si, di
    0x57,                   // 24 push di
    0xBF, 0x80, 0x7C,       // 25 mov di, DAP_LBA          ; DAP + 8 = 0x7C80
    0xA5,                   // 28 movsw                    ; copy the 8-byte LBA ...
    0xA5,                   // 29 movsw
    0xA5,                   // 2A movsw
    0xA5,                   // 2B movsw                    ; ... into the packet
    0x5F,                   // 2C pop di
    0xBE, 0x78, 0x7C,       // 2D mov si, DAP              ; DS:SI = disk address packet
    0xB4, 0x42,             // 30 mov ah, 0x42             ; extended read
    0x8A, 0x16, 0x74, 0x7C, // 32 mov dl, [DRIVE]
    0xCD, 0x13,             // 36 int 0x13
    0x72, 0x1E,             // 38 jc fail                  ; 0x3A + 0x1E = 0x58
    0xBE, 0x00, 0x80,       // 3A mov si, 0x8000           ; the sector just read
    0xB9, 0x10, 0x00,       // 3D mov cx, 16               ; PRINTED_BYTES
    // 40: print_byte
    0xAC,                   // 40 lodsb
    0xE8, 0x29, 0x00,       // 41 call putc                ; 0x44 + 0x29 = 0x6D
    0xE2, 0xFA,             // 44 loop print_byte          ; 0x46 - 6 = 0x40
    0xB0, 0x0A,             // 46 mov al, '\n'
    0xE8, 0x22, 0x00,       // 48 call putc                ; 0x4B + 0x22 = 0x6D
    0x83, 0xC7, 0x08,       // 4B add di, 8                ; next table entry
    0x59,                   // 4E pop cx
    0xE2, 0xD0,             // 4F loop next_probe          ; 0x51 - 0x30 = 0x21
    0xB0, 0x10,             // 51 mov al, 0x10             ; success
    // 53: exit (AL = isa-debug-exit value)
    0xE6, 0xF4,             // 53 out 0xF4, al             ; QEMU exits here
    0xF4,                   // 55 hlt                      ; (never reached under QEMU)
    0xEB, 0xFD,             // 56 jmp 0x55
    // 58: fail
    0xBE, 0x88, 0x7C,       // 58 mov si, ERRMSG           ; ERRMSG = 0x7C88
    0xE8, 0x04, 0x00,       // 5B call puts                ; 0x5E + 0x04 = 0x62
    0xB0, 0x11,             // 5E mov al, 0x11             ; read error
    0xEB, 0xF1,             // 60 jmp exit                 ; 0x62 - 0x0F = 0x53
    // 62: puts (DS:SI = NUL-terminated string)
    0xAC,                   // 62 lodsb
    0x84, 0xC0,             // 63 test al, al
    0x74, 0x05,             // 65 jz puts_done             ; 0x67 + 5 = 0x6C
    0xE8, 0x03, 0x00,       // 67 call putc                ; 0x6A + 3 = 0x6D
    0xEB, 0xF6,             // 6A jmp puts                 ; 0x6C - 0x0A = 0x62
    0xC3,                   // 6C puts_done: ret
    // 6D: putc (AL = byte)
    0x52,                   // 6D push dx
    0xBA, 0xF8, 0x03,       // 6E mov dx, 0x3F8            ; COM1 transmit register
    0xEE,                   // 71 out dx, al
    0x5A,                   // 72 pop dx
    0xC3,                   // 73 ret
];

/// Sector offset of the saved boot drive byte.
const DRIVE_AT: usize = 0x74;
/// Sector offset of the 16-byte disk address packet.
const DAP_AT: usize = 0x78;
/// The disk address packet, LBA left zero: size 16, one sector, buffer 0000:8000.
#[rustfmt::skip]
const DAP: [u8; 8] = [
    0x10, 0x00, // packet size, reserved
    0x01, 0x00, // sectors to read
    0x00, 0x80, // buffer offset 0x8000
    0x00, 0x00, // buffer segment 0
];
/// Sector offset of the read-error message.
const ERRMSG_AT: usize = 0x88;
const ERRMSG: &[u8] = b"ERR\n\0";
/// Sector offset of the banner.
const BANNER_AT: usize = 0x90;

/// The boot sector that reads and prints the sectors at `lbas`, in order.
pub fn boot_sector(lbas: &[u64]) -> [u8; 512] {
    assert!(lbas.len() <= MAX_PROBES, "at most {MAX_PROBES} probes");
    assert!(BANNER_AT + BANNER.len() < TABLE_AT);
    let mut s = [0u8; 512];
    s[..CODE.len()].copy_from_slice(&CODE);
    s[DRIVE_AT] = 0x80;
    s[COUNT_AT] = lbas.len() as u8;
    s[DAP_AT..DAP_AT + DAP.len()].copy_from_slice(&DAP);
    s[ERRMSG_AT..ERRMSG_AT + ERRMSG.len()].copy_from_slice(ERRMSG);
    s[BANNER_AT..BANNER_AT + BANNER.len()].copy_from_slice(BANNER.as_bytes());
    for (i, lba) in lbas.iter().enumerate() {
        s[TABLE_AT + i * 8..TABLE_AT + i * 8 + 8].copy_from_slice(&lba.to_le_bytes());
    }
    s[0x1FE] = 0x55;
    s[0x1FF] = 0xAA;
    s
}

/// The absolute address of a sector offset, as the code above uses it.
pub fn address_of(offset: usize) -> u16 {
    LOAD_ADDRESS + offset as u16
}

#[test]
fn the_code_refers_to_its_data_at_the_addresses_the_layout_gives() {
    let le = |at: usize| u16::from_le_bytes([CODE[at], CODE[at + 1]]);
    assert_eq!(le(0x10), address_of(DRIVE_AT));
    assert_eq!(le(0x13), address_of(BANNER_AT));
    assert_eq!(le(0x19), address_of(TABLE_AT));
    assert_eq!(le(0x1D), address_of(COUNT_AT));
    assert_eq!(le(0x26), address_of(DAP_AT + 8));
    assert_eq!(le(0x2E), address_of(DAP_AT));
    assert_eq!(le(0x34), address_of(DRIVE_AT));
    assert_eq!(le(0x59), address_of(ERRMSG_AT));
    assert_eq!(CODE[0x3E] as usize, PRINTED_BYTES);
    assert!(CODE.len() <= DRIVE_AT && DAP_AT + 16 <= ERRMSG_AT);
    assert!(ERRMSG_AT + ERRMSG.len() <= BANNER_AT);
}
