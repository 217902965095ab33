//! What execve runs by itself: ELF binaries and scripts naming their
//! interpreter (`#!`). One source for tcpmuxd's program check and the warm
//! unit helper's (compiled into the helper by path), so that both refuse
//! the same files with the same words.

/// How an ELF binary begins.
pub const ELF_MAGIC: &[u8] = b"\x7fELF";
/// How a script naming its interpreter begins.
pub const SCRIPT_MAGIC: &[u8] = b"#!";
/// The longest beginning [`is_executable_format`] looks at.
pub const HEAD_LEN: usize = 4;

/// Why a file in neither format is refused.
pub const NOT_EXECUTABLE_FORMAT: &str =
    "not an executable format (neither an ELF binary nor a #! script)";

/// Whether a file beginning with `head` is one execve runs by itself.
pub fn is_executable_format(head: &[u8]) -> bool {
    head.starts_with(ELF_MAGIC) || head.starts_with(SCRIPT_MAGIC)
}
