//! The memory functions the compiler calls for copies and comparisons, which a program without a C
//! library must supply. Plain byte loops: the shim copies a few hundred bytes in its whole life. The
//! crate is `no_builtins`, so these loops are never turned back into calls to themselves.

/// # Safety
/// As C's memcpy: `n` bytes readable at `src`, writable at `dest`, not overlapping.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller's promise.
        unsafe { *dest.add(i) = *src.add(i) };
    }
    dest
}

/// # Safety
/// As C's memmove: `n` bytes readable at `src` and writable at `dest`, which may overlap.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize) < (src as usize) {
        for i in 0..n {
            // SAFETY: the caller's promise; forwards, so no byte is overwritten before it is read.
            unsafe { *dest.add(i) = *src.add(i) };
        }
    } else {
        for i in (0..n).rev() {
            // SAFETY: as above, backwards.
            unsafe { *dest.add(i) = *src.add(i) };
        }
    }
    dest
}

/// # Safety
/// As C's memset: `n` bytes writable at `dest`.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, value: i32, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller's promise.
        unsafe { *dest.add(i) = value as u8 };
    }
    dest
}

/// # Safety
/// As C's memcmp: `n` bytes readable at `a` and at `b`.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller's promise.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// As memcmp.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: forwarded.
    unsafe { memcmp(a, b, n) }
}

/// # Safety
/// As C's strlen: `s` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    // SAFETY: the caller's promise: a NUL comes before the end of the allocation.
    while unsafe { *s.add(n) } != 0 {
        n += 1;
    }
    n
}

/// Named by the unwind tables of the precompiled `core`; never called, as the shim aborts on panic
/// (and has no panic path it takes).
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}
