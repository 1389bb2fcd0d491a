//! Test fixture: the hostile plugin whose `subscriptions()` loops forever.
const AT_LOAD: &str = "loop";
include!("../../hostile/src/handler.rs");
