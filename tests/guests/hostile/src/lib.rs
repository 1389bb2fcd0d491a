//! Test fixture: a plugin that attacks the host's time (see handler.rs); loads normally.
const AT_LOAD: &str = "none";
include!("handler.rs");
