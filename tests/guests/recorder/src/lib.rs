//! Test fixture: records every event it handles and misbehaves on request (see handler.rs).
const MARK: &str = "v1";
include!("handler.rs");
