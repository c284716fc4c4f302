//! Cross-crate and multi-process tests live in `tests/tests/`.
