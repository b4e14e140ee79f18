//! Cache hints for data a kernel will read soon: [`prefetch`] asks the memory system to start
//! loading a slice while other work runs, so that the kernel that reads it later finds it in cache
//! instead of waiting on each cache line in turn (the LoRA factors of one weight are a few KiB
//! scattered over the file, too short for the hardware prefetchers to pick up).
//!
//! A hint never faults and changes no value; on a target without one it does nothing.

/// Cache line size assumed for the hints (x86-64 and the Cortex-A cores).
const LINE: usize = 64;

/// Hints every cache line of `data` into the cache.
#[inline]
pub fn prefetch<T>(data: &[T]) {
    let p = data.as_ptr().cast::<u8>();
    let bytes = core::mem::size_of_val(data);
    let mut off = 0;
    while off < bytes {
        line(p.wrapping_add(off));
        off += LINE;
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn line(p: *const u8) {
    use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: `prefetcht0` is SSE, which every x86-64 CPU has (the target's baseline); it only
    // computes the address and never faults or reads into a register.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) };
}

#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn line(p: *const u8) {
    // SAFETY: `prfm` is a hint in the base ARMv8 instruction set: it takes an address, never
    // faults (not even on an unmapped one), reads nothing into a register and writes no memory, flag
    // or register.
    unsafe {
        core::arch::asm!(
            "prfm pldl1keep, [{0}]",
            in(reg) p,
            options(nostack, readonly, preserves_flags)
        )
    };
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[inline(always)]
fn line(_: *const u8) {}
