//! (Being written.)
use crate::Kernels;

/// This tier's table, if the CPU supports it.
pub fn kernels() -> Option<&'static Kernels> {
    None
}
