//! Gives an oversized request etcd's answer. etcd's gRPC stack refuses a message above the
//! receive limit with `ResourceExhausted "grpc: received message larger than max (N vs. M)"`;
//! tonic says `OutOfRange` with other words. Clients and tests match etcd's, so the client
//! listener (`dispatch`) rewrites tonic's status on the way out.

use http::{HeaderValue, Response};

const TONIC_PREFIX: &str = "Error, decoded message length too large: found ";
/// gRPC status codes as they appear in the `grpc-status` header.
const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";

/// Gives a refusal of an oversized request (tonic's `OutOfRange`) etcd's code and wording.
pub fn rewrite<B>(response: &mut Response<B>) {
    let headers = response.headers_mut();
    if headers.get("grpc-status").and_then(|v| v.to_str().ok()) != Some(OUT_OF_RANGE) {
        return;
    }
    let Some(message) = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
    else {
        return;
    };
    let Some(etcd_message) = etcd_wording(&message) else {
        return;
    };
    if let Ok(value) = HeaderValue::from_str(&percent_encode(&etcd_message)) {
        headers.insert("grpc-status", HeaderValue::from_static(RESOURCE_EXHAUSTED));
        headers.insert("grpc-message", value);
    }
}

/// "Error, decoded message length too large: found N bytes, the limit is: M bytes"
/// -> "grpc: received message larger than max (N vs. M)".
fn etcd_wording(tonic_message: &str) -> Option<String> {
    let rest = tonic_message.strip_prefix(TONIC_PREFIX)?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some(format!(
        "grpc: received message larger than max ({found} vs. {limit})"
    ))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// gRPC's percent-encoding of messages: everything outside printable ASCII, and '%'.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonic_wording_becomes_etcds() {
        assert_eq!(
            etcd_wording("Error, decoded message length too large: found 2097162 bytes, the limit is: 2097152 bytes").as_deref(),
            Some("grpc: received message larger than max (2097162 vs. 2097152)")
        );
        assert_eq!(etcd_wording("something else"), None);
        assert_eq!(percent_decode("a%20b%25"), "a b%");
        assert_eq!(percent_encode("a b%"), "a b%25");
    }
}
