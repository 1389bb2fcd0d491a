//! Test fixture: the recorder, marked `v2` (a different version for hot-reload tests).
const MARK: &str = "v2";
include!("../../recorder/src/handler.rs");
