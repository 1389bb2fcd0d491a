//! Test fixture: the hostile plugin whose `subscriptions()` sleeps for an hour.
const AT_LOAD: &str = "sleep";
include!("../../hostile/src/handler.rs");
