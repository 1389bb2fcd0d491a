//! Test fixture: the hostile plugin whose `subscriptions()` names 100,000 streams (issue 23:
//! each would be a reader task, a consumer group and gauge series).
const AT_LOAD: &str = "streams";
include!("../../hostile/src/handler.rs");
