//! Test fixture: the echo handler (`contract-echo.rs`) built against `ferry:plugin@0.1.0`, the
//! contract's first version, as every plugin built before 0.2.0 is.
wit_bindgen::generate!({ world: "subscriber", path: "../../../plugin-sdk/wit" });

include!("../../contract-echo.rs");
