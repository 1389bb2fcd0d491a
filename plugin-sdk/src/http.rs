//! Outbound HTTP requests, through the standard `wasi:http/outgoing-handler`.
//!
//! A small blocking client, like the handler it is called from: build a [`Request`], `send`
//! it, read the [`Response`]. Needs the operator's grant, `[subscribers.NAME.http] allow =
//! ["https://api.example.com"]`: a plugin that sends requests without it is refused at load,
//! and a request to an origin the grant does not name fails with `HttpRequestDenied`.
//!
//! The host bounds every request (timeouts within the event's deadline, body sizes, requests
//! per event) and adds `Idempotency-Key: SUBSCRIBER:EVENT_ID`, the same on every attempt of
//! the event: an HTTP call is at least once (a retried event calls again), and the key is
//! how the receiving API dedupes. Redirects are not followed.
//!
//! An [`HttpError`] converts into a [retry](crate::Error::retry), so `?` retries the event;
//! decide on the status yourself (a 4xx is usually a [rejection](crate::Error::reject)). On
//! the machine's own target (`cargo test`) requests go to [`crate::testing`]'s doubles.
//!
//! ```no_run
//! use ferry_plugin_sdk::{Error, Result, http};
//!
//! fn send_mail(api: &str, to: &str) -> Result {
//!     let response = http::Request::post(&format!("{api}/messages"))
//!         .json(&serde_json::json!({ "to": to, "template": "welcome" }))?
//!         .send()?;
//!     match response.status() {
//!         200..=299 => Ok(()),
//!         400..=499 => Err(Error::reject(format!("the mail API refused it: {}", response.status()))),
//!         status => Err(Error::retry(format!("the mail API answered {status}"))),
//!     }
//! }
//! ```
//!
//! Why our own helper over the `wasi` crate's bindings rather than `wstd` or `waki`: a ferry
//! handler is synchronous, wstd's client is async (it would need its own executor in every
//! call), and a client of our own is what lets `cargo test` fake the network with the same
//! API ([`crate::testing::respond`]).

use std::fmt;

/// An HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
}

impl Method {
    /// Its name, `GET`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// `scheme://host[:port]/path?query`.
    pub url: String,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body (empty: none).
    pub body: Vec<u8>,
}

impl Request {
    /// A request of `method` to `url`.
    pub fn new(method: Method, url: &str) -> Self {
        Self { method, url: url.to_string(), headers: Vec::new(), body: Vec::new() }
    }
    /// A GET of `url`.
    pub fn get(url: &str) -> Self {
        Self::new(Method::Get, url)
    }
    /// A POST to `url`.
    pub fn post(url: &str) -> Self {
        Self::new(Method::Post, url)
    }
    /// A PUT to `url`.
    pub fn put(url: &str) -> Self {
        Self::new(Method::Put, url)
    }
    /// A DELETE of `url`.
    pub fn delete(url: &str) -> Self {
        Self::new(Method::Delete, url)
    }
    /// Add a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    /// Set the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
    /// Set the body to `value` as JSON, with `content-type: application/json`.
    pub fn json<T: serde::Serialize>(self, value: &T) -> crate::Result<Self> {
        let body = serde_json::to_vec(value)
            .map_err(|e| crate::Error::reject(format!("cannot serialize the request body: {e}")))?;
        Ok(self.header("content-type", "application/json").body(body))
    }
    /// Send it and read the whole response.
    pub fn send(self) -> Result<Response, HttpError> {
        #[cfg(target_arch = "wasm32")]
        return wasi_http::send(self);
        #[cfg(not(target_arch = "wasm32"))]
        return crate::testing::http::send(self);
    }
}

/// A response, read to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    /// A response with `status` and `body` (for tests: see [`crate::testing::respond`]).
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self { status, headers: Vec::new(), body: body.into() }
    }
    /// Add a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body deserialized from JSON; a body that is not the expected JSON is an error.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| HttpError(format!("the response is not the expected JSON: {e}")))
    }
}

/// Why a request failed: refused by the host (`HttpRequestDenied`: not granted), a timeout, a
/// connection error, a body over its bound. Converts into a [retry](crate::Error::retry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError(pub String);

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for crate::Error {
    fn from(e: HttpError) -> Self {
        crate::Error::retry(format!("http: {e}"))
    }
}

/// The client over the `wasi` crate's `wasi:http` bindings.
#[cfg(target_arch = "wasm32")]
mod wasi_http {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{ErrorCode, Fields, Method as WasiMethod, OutgoingBody, OutgoingRequest, Scheme};
    use wasi::io::streams::StreamError;

    use super::{HttpError, Method, Request, Response};

    fn code(e: &ErrorCode) -> HttpError {
        let debug = format!("{e:?}");
        HttpError(debug.strip_prefix("ErrorCode::").unwrap_or(&debug).to_string())
    }

    fn bad(what: &str) -> HttpError {
        HttpError(format!("invalid request: {what}"))
    }

    /// The outgoing request of `request`: method, scheme, authority, path and headers.
    fn outgoing(request: &Request) -> Result<OutgoingRequest, HttpError> {
        let (scheme, rest) = request.url.split_once("://").ok_or_else(|| bad("no scheme in the url"))?;
        let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
        let headers = Fields::new();
        for (name, value) in &request.headers {
            headers.append(name, value.as_bytes()).map_err(|e| bad(&format!("header {name}: {e:?}")))?;
        }
        let out = OutgoingRequest::new(headers);
        let method = match request.method {
            Method::Get => WasiMethod::Get,
            Method::Head => WasiMethod::Head,
            Method::Post => WasiMethod::Post,
            Method::Put => WasiMethod::Put,
            Method::Patch => WasiMethod::Patch,
            Method::Delete => WasiMethod::Delete,
        };
        out.set_method(&method).map_err(|()| bad("method"))?;
        let scheme = match scheme {
            "https" => Scheme::Https,
            "http" => Scheme::Http,
            other => Scheme::Other(other.to_string()),
        };
        out.set_scheme(Some(&scheme)).map_err(|()| bad("scheme"))?;
        out.set_authority(Some(authority)).map_err(|()| bad("authority"))?;
        out.set_path_with_query(Some(path)).map_err(|()| bad("path"))?;
        Ok(out)
    }

    pub(super) fn send(request: Request) -> Result<Response, HttpError> {
        let out = outgoing(&request)?;
        let body = out.body().map_err(|()| bad("body"))?;
        let pending = outgoing_handler::handle(out, None).map_err(|e| code(&e))?;
        if !request.body.is_empty() {
            let stream = body.write().map_err(|()| bad("body stream"))?;
            for chunk in request.body.chunks(4096) {
                stream.blocking_write_and_flush(chunk).map_err(|e| HttpError(format!("writing the body: {e:?}")))?;
            }
            drop(stream);
        }
        OutgoingBody::finish(body, None).map_err(|e| code(&e))?;
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(e))) => return Err(code(&e)),
            Some(Err(())) | None => return Err(HttpError("no response".into())),
        };
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let incoming = response.consume().map_err(|()| HttpError("response body".into()))?;
        let stream = incoming.stream().map_err(|()| HttpError("response stream".into()))?;
        let mut bytes = Vec::new();
        loop {
            match stream.blocking_read(64 << 10) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    // The host's reason (a bound, a timeout) is the stream's error.
                    let code = wasi::http::types::http_error_code(&e);
                    return Err(code.map_or_else(|| HttpError(e.to_debug_string()), |c| self::code(&c)));
                }
            }
        }
        drop(stream);
        Ok(Response { status, headers, body: bytes })
    }
}
