//! Test fixture: a valid component that does not export the ferry handler.
wit_bindgen::generate!({ world: "nothing", path: "wit" });

struct Nothing;

impl Guest for Nothing {
    fn hello() -> u32 {
        42
    }
}

export!(Nothing);
