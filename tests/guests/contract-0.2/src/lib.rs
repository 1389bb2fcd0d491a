//! Test fixture: the echo handler (`contract-echo.rs`) built against `ferry:plugin@0.2.0`.
wit_bindgen::generate!({ world: "subscriber", path: "../../../plugin-sdk/wit-0.2.0" });

include!("../../contract-echo.rs");
