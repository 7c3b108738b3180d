//! JSON as etcd's gateway writes it (Go's encoding/json under grpc-gateway's JSONPb) and reads
//! it (one value per request; a stream's requests are JSON values one after another).

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter};
use tonic::Status;

/// Go's string escaping: besides what JSON requires, `<`, `>`, `&` and U+2028/U+2029 become
/// `\u003c`-style escapes, and backspace and form feed are written as `\u0008`, `\u000c`.
struct GoFormatter;

impl Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escape = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(escape.as_bytes())?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        char_escape: CharEscape,
    ) -> io::Result<()> {
        let text: &[u8] = match char_escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::Backspace => b"\\u0008",
            CharEscape::FormFeed => b"\\u000c",
            CharEscape::Solidus => b"/",
            CharEscape::AsciiControl(byte) => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let escaped = [
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(byte >> 4)],
                    HEX[usize::from(byte & 0xf)],
                ];
                return writer.write_all(&escaped);
            }
        };
        writer.write_all(text)
    }
}

/// Compact JSON with Go's escaping.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Status> {
    let mut out = Vec::with_capacity(128);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    value
        .serialize(&mut serializer)
        .map_err(|e| Status::internal(format!("marshaling the response: {e}")))?;
    Ok(out)
}

/// A unary request: the first JSON value of the body; an empty body is the default request
/// (as Go's decoder reporting EOF), anything after the first value is ignored.
pub fn decode_one<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, String> {
    match serde_json::Deserializer::from_slice(body)
        .into_iter::<T>()
        .next()
    {
        None => Ok(T::default()),
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) if e.is_eof() => Err("unexpected EOF".to_string()),
        Some(Err(e)) => Err(e.to_string()),
    }
}

/// What reading a stream's next request gave.
#[derive(Debug)]
pub enum Next<T> {
    Request(T),
    /// The body ended cleanly (only whitespace after the last value).
    End,
    /// Not JSON, not the request type, cut short, or larger than the limit.
    Invalid(String),
}

/// The requests of a client stream, decoded as the body arrives; a value may span chunks,
/// and the bytes held for an incomplete one never exceed `limit`.
pub struct RequestReader<B> {
    body: B,
    buffer: BytesMut,
    body_done: bool,
    limit: usize,
}

impl<B> RequestReader<B>
where
    B: Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    pub fn new(body: B, limit: usize) -> Self {
        Self {
            body,
            buffer: BytesMut::new(),
            body_done: false,
            limit,
        }
    }

    pub async fn next<T: DeserializeOwned>(&mut self) -> Next<T> {
        // Each round either yields, or reads one more chunk of a body that is finite or
        // bounded by `limit` while a value is incomplete.
        loop {
            let mut values = serde_json::Deserializer::from_slice(&self.buffer).into_iter::<T>();
            match values.next() {
                Some(Ok(value)) => {
                    let used = values.byte_offset();
                    self.buffer.advance(used);
                    return Next::Request(value);
                }
                Some(Err(e)) if !e.is_eof() => return Next::Invalid(e.to_string()),
                // Incomplete value, or only whitespace so far.
                _ => {}
            }
            if self.body_done {
                let only_whitespace = self.buffer.iter().all(u8::is_ascii_whitespace);
                return if only_whitespace {
                    Next::End
                } else {
                    Next::Invalid("unexpected EOF".to_string())
                };
            }
            if self.buffer.len() > self.limit {
                return Next::Invalid(format!("request larger than {} bytes", self.limit));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    if self.buffer.iter().all(u8::is_ascii_whitespace) {
                        self.buffer.clear();
                    }
                    self.buffer.extend_from_slice(&chunk);
                }
                Some(Err(e)) => return Next::Invalid(e.to_string()),
                None => self.body_done = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_go_does() {
        let text = "a<b>&\"\\\n\t\u{8}\u{c}\u{1}/\u{2028}é";
        let encoded = String::from_utf8(to_vec(text).expect("encodes")).expect("utf-8");
        assert_eq!(
            encoded,
            r#""a\u003cb\u003e\u0026\"\\\n\t\u0008\u000c\u0001/\u2028é""#
        );
    }

    #[test]
    fn a_unary_body_is_its_first_value_or_the_default() {
        let empty: serde_json::Value = decode_one(b"  ").expect("empty body");
        assert_eq!(empty, serde_json::Value::Null);
        let first: serde_json::Value = decode_one(br#"{"a":1} {"b":2}"#).expect("first value");
        assert_eq!(first, serde_json::json!({"a": 1}));
        assert_eq!(
            decode_one::<serde_json::Value>(br#"{"a":"#).expect_err("cut short"),
            "unexpected EOF"
        );
    }

    #[tokio::test]
    async fn stream_requests_may_span_chunks() {
        let chunks: Vec<Result<Bytes, axum::Error>> = vec![
            Ok(Bytes::from_static(b"{\"a\":")),
            Ok(Bytes::from_static(b"1}\n{\"a\"")),
            Ok(Bytes::from_static(b":2} \n")),
        ];
        let mut reader = RequestReader::new(futures::stream::iter(chunks), 1024);
        for expected in [1, 2] {
            match reader.next::<serde_json::Value>().await {
                Next::Request(v) => assert_eq!(v, serde_json::json!({ "a": expected })),
                other => panic!("expected a request, got {other:?}"),
            }
        }
        assert!(matches!(
            reader.next::<serde_json::Value>().await,
            Next::End
        ));
    }

    #[tokio::test]
    async fn an_incomplete_value_larger_than_the_limit_is_refused() {
        let chunks: Vec<Result<Bytes, axum::Error>> = (0..100)
            .map(|_| Ok(Bytes::from_static(b"{\"a\":\"xxxxxxxxxxxxxxxxxxxxxxxx")))
            .collect();
        let mut reader = RequestReader::new(futures::stream::iter(chunks), 256);
        assert!(matches!(
            reader.next::<serde_json::Value>().await,
            Next::Invalid(_)
        ));
    }
}
