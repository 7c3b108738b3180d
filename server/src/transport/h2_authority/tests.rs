use std::collections::VecDeque;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::hpack::{self, huffman_encode, Decoder, Field, HpackError};
use super::*;

// ---------------------------------------------------------------------------------------
// A client-side encoder for the tests: the representations real clients use.
// ---------------------------------------------------------------------------------------

fn int(out: &mut Vec<u8>, flags: u8, prefix: u8, value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

fn string(out: &mut Vec<u8>, s: &[u8], huffman: bool) {
    if huffman {
        let coded = huffman_encode(s);
        int(out, 0x80, 7, coded.len());
        out.extend_from_slice(&coded);
    } else {
        int(out, 0, 7, s.len());
        out.extend_from_slice(s);
    }
}

/// Indexed field (static 1..=61, dynamic from 62).
fn indexed(out: &mut Vec<u8>, index: usize) {
    int(out, 0x80, 7, index);
}

/// Literal with incremental indexing, name by index (0 = literal name).
fn incremental(out: &mut Vec<u8>, name_index: usize, name: &[u8], value: &[u8], huffman: bool) {
    int(out, 0x40, 6, name_index);
    if name_index == 0 {
        string(out, name, huffman);
    }
    string(out, value, huffman);
}

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn settings_frame() -> Vec<u8> {
    frame(0x4, 0, 0, &[])
}

fn data_frame(stream_id: u32, payload: &[u8], end_stream: bool) -> Vec<u8> {
    frame(0x0, u8::from(end_stream), stream_id, payload)
}

fn headers_frame(stream_id: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
    let flags = FLAG_END_HEADERS | if end_stream { FLAG_END_STREAM } else { 0 };
    frame(FRAME_HEADERS, flags, stream_id, block)
}

/// The three header blocks grpc-go would send for three calls on one connection, using the
/// dynamic table as an encoder does: the second call is all indexed references.
fn grpc_blocks(authority: &[u8]) -> Vec<Vec<u8>> {
    let mut first = Vec::new();
    indexed(&mut first, 3); // :method POST
    indexed(&mut first, 6); // :scheme http
    incremental(
        &mut first,
        4,
        b"",
        b"/etcdserverpb.Maintenance/Status",
        true,
    ); // 64 after the rest
    incremental(&mut first, 1, b"", authority, true); // :authority, 63
    incremental(&mut first, 31, b"", b"application/grpc", true); // content-type, 62
    let mut second = Vec::new();
    indexed(&mut second, 3);
    indexed(&mut second, 6);
    indexed(&mut second, 64);
    indexed(&mut second, 63);
    indexed(&mut second, 62);
    let mut third = Vec::new();
    indexed(&mut third, 3);
    indexed(&mut third, 6);
    incremental(&mut third, 4, b"", b"/etcdserverpb.KV/Range", false); // 62 now
    indexed(&mut third, 64); // :authority
    indexed(&mut third, 63); // content-type
    incremental(&mut third, 0, b"x-custom", b"value", true);
    vec![first, second, third]
}

fn expected_fields(authority: Option<&str>, path: &str, custom: bool) -> Vec<(String, String)> {
    let mut fields = vec![
        (":method".to_string(), "POST".to_string()),
        (":scheme".to_string(), "http".to_string()),
        (":path".to_string(), path.to_string()),
    ];
    if let Some(a) = authority {
        fields.push((":authority".to_string(), a.to_string()));
    }
    fields.push(("content-type".to_string(), "application/grpc".to_string()));
    if custom {
        fields.push(("x-custom".to_string(), "value".to_string()));
    }
    fields
}

fn decode_all(decoder: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, HpackError> {
    let mut fields = Vec::new();
    decoder.decode(block, |f| {
        fields.push((
            String::from_utf8_lossy(f.name).into_owned(),
            String::from_utf8_lossy(f.value).into_owned(),
        ))
    })?;
    Ok(fields)
}

/// Runs `input` through a filter in pieces of `step` bytes; returns the output.
fn filter_bytes(input: &[u8], step: usize) -> (Vec<u8>, Filter) {
    let mut filter = Filter::new();
    let mut pending = BytesMut::new();
    let mut out = VecDeque::new();
    for piece in input.chunks(step.max(1)) {
        pending.extend_from_slice(piece);
        filter.process(&mut pending, &mut out);
    }
    filter.finish(&mut pending, &mut out);
    let mut all = Vec::new();
    for chunk in out {
        all.extend_from_slice(&chunk);
    }
    (all, filter)
}

/// A parsed frame of the filter's output.
#[derive(Debug)]
struct OutFrame {
    kind: u8,
    flags: u8,
    stream_id: u32,
    payload: Vec<u8>,
}

fn parse_frames(bytes: &[u8]) -> Vec<OutFrame> {
    assert!(bytes.starts_with(PREFACE), "output starts with the preface");
    let mut rest = &bytes[PREFACE.len()..];
    let mut frames = Vec::new();
    while !rest.is_empty() {
        assert!(rest.len() >= 9, "truncated frame header in the output");
        let len = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
        assert!(rest.len() >= 9 + len, "truncated frame in the output");
        frames.push(OutFrame {
            kind: rest[3],
            flags: rest[4],
            stream_id: u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]),
            payload: rest[9..9 + len].to_vec(),
        });
        rest = &rest[9 + len..];
    }
    frames
}

/// A decoded header block of the output: stream, END_STREAM, fields.
type OutBlock = (u32, bool, Vec<(String, String)>);

/// Decodes the header blocks of the output as h2 would, with one decoder for the connection.
fn output_blocks(bytes: &[u8]) -> Vec<OutBlock> {
    let mut decoder = Decoder::new();
    let mut blocks = Vec::new();
    let mut current: Option<(u32, bool, Vec<u8>)> = None;
    for f in parse_frames(bytes) {
        match f.kind {
            FRAME_HEADERS => {
                assert!(current.is_none(), "HEADERS inside a block");
                let range = headers_fragment(f.flags, &f.payload).expect("valid HEADERS");
                current = Some((
                    f.stream_id,
                    f.flags & FLAG_END_STREAM != 0,
                    f.payload[range].to_vec(),
                ));
            }
            FRAME_CONTINUATION => {
                let block = current.as_mut().expect("CONTINUATION after HEADERS");
                assert_eq!(block.0, f.stream_id);
                block.2.extend_from_slice(&f.payload);
            }
            _ => {
                assert!(current.is_none(), "frame inside a header block");
                continue;
            }
        }
        assert!(
            f.payload.len() <= MAX_OUT_FRAME,
            "frame of {} bytes",
            f.payload.len()
        );
        if f.flags & FLAG_END_HEADERS != 0 {
            let (stream, end, block) = current.take().expect("a block");
            let fields = decode_all(&mut decoder, &block).expect("h2 can decode the output");
            blocks.push((stream, end, fields));
        }
    }
    assert!(current.is_none(), "unfinished header block in the output");
    blocks
}

fn connection(blocks: &[Vec<u8>]) -> Vec<u8> {
    let mut input = PREFACE.to_vec();
    input.extend(settings_frame());
    for (i, block) in blocks.iter().enumerate() {
        let stream = 1 + 2 * i as u32;
        input.extend(headers_frame(stream, block, false));
        input.extend(data_frame(stream, b"\0\0\0\0\0", true));
    }
    input
}

// ---------------------------------------------------------------------------------------
// HPACK
// ---------------------------------------------------------------------------------------

#[test]
fn huffman_matches_rfc_7541_examples() {
    // RFC 7541 C.4.1 and C.4.2.
    let cases: [(&str, &str); 3] = [
        ("www.example.com", "f1e3c2e5f23a6ba0ab90f4ff"),
        ("no-cache", "a8eb10649cbf"),
        ("custom-value", "25a849e95bb8e8b4bf"),
    ];
    for (text, hex) in cases {
        let coded: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        assert_eq!(huffman_encode(text.as_bytes()), coded, "{text}");
        let mut block = Vec::new();
        incremental(&mut block, 0, b"x", text.as_bytes(), true);
        let fields = decode_all(&mut Decoder::new(), &block).expect("decodes");
        assert_eq!(fields, vec![("x".to_string(), text.to_string())]);
    }
}

#[test]
fn huffman_round_trips_every_byte_and_refuses_bad_padding() {
    let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let mut block = Vec::new();
    incremental(&mut block, 0, b"name", &all, true);
    let mut decoder = Decoder::new();
    let mut seen = Vec::new();
    decoder
        .decode(&block, |f| seen.push(f.value.to_vec()))
        .expect("decodes");
    assert_eq!(seen, vec![all]);

    // "a" is 00011 (5 bits): padding with zeros instead of ones is an error.
    let mut bad = vec![0x00, 0x01, b'x', 0x81, 0b0001_1000];
    assert_eq!(
        Decoder::new().decode(&bad, |_| {}),
        Err(HpackError::Huffman)
    );
    // A whole byte of padding (more than 7 bits) is an error too.
    bad = vec![0x00, 0x01, b'x', 0x82, 0b0001_1111, 0xff];
    assert_eq!(
        Decoder::new().decode(&bad, |_| {}),
        Err(HpackError::Huffman)
    );
    // The EOS symbol (30 ones) inside a string.
    bad = vec![0x00, 0x01, b'x', 0x84, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(
        Decoder::new().decode(&bad, |_| {}),
        Err(HpackError::Huffman)
    );
}

#[test]
fn decoder_follows_rfc_7541_c3_requests_with_the_dynamic_table() {
    let hex_blocks = [
        "828684410f7777772e6578616d706c652e636f6d",
        "828684be58086e6f2d6361636865",
        "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
    ];
    let expected: [&[(&str, &str)]; 3] = [
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ],
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
            ("cache-control", "no-cache"),
        ],
        &[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ],
    ];
    let mut decoder = Decoder::new();
    for (hex, want) in hex_blocks.iter().zip(expected) {
        let block: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        let got = decode_all(&mut decoder, &block).expect("decodes");
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }
    assert_eq!(decoder.table_len(), 3);
}

#[test]
fn decoder_evicts_and_refuses_what_h2_refuses() {
    let mut decoder = Decoder::new();
    // Two entries of 32 + 1 + 2000 bytes fit in 4096; a third evicts the oldest.
    let value = vec![b'v'; 2000];
    for name in [b"a", b"b", b"c"] {
        let mut block = Vec::new();
        incremental(&mut block, 0, name, &value, false);
        decode_all(&mut decoder, &block).expect("decodes");
    }
    assert_eq!(decoder.table_len(), 2);
    let mut block = Vec::new();
    indexed(&mut block, 63);
    let fields = decode_all(&mut decoder, &block).expect("decodes");
    assert_eq!(fields[0].0, "b", "index 63 is the second newest");
    let mut block = Vec::new();
    indexed(&mut block, 64);
    assert_eq!(
        decode_all(&mut decoder, &block),
        Err(HpackError::BadIndex(64))
    );
    // A size update above the advertised 4096, or after a field, is an error (as in h2).
    let mut block = Vec::new();
    int(&mut block, 0x20, 5, 8192);
    assert_eq!(
        decode_all(&mut decoder, &block),
        Err(HpackError::TableSizeTooLarge(8192))
    );
    let mut block = Vec::new();
    indexed(&mut block, 2);
    int(&mut block, 0x20, 5, 0);
    assert_eq!(
        decode_all(&mut decoder, &block),
        Err(HpackError::LateTableSizeUpdate)
    );
    // Truncated input.
    assert_eq!(
        decode_all(&mut Decoder::new(), &[0x40, 0x05, b'a']),
        Err(HpackError::Truncated)
    );
}

#[test]
fn encoder_writes_literals_that_leave_the_table_empty() {
    let mut block = Vec::new();
    hpack::encode_table_size_update(&mut block, 0);
    hpack::encode_literal(
        &mut block,
        Field {
            name: b":path",
            value: b"/a",
            never_indexed: false,
        },
    );
    hpack::encode_literal(
        &mut block,
        Field {
            name: b"authorization",
            value: b"secret",
            never_indexed: true,
        },
    );
    hpack::encode_literal(
        &mut block,
        Field {
            name: b"x-long",
            value: &vec![b'z'; 300],
            never_indexed: false,
        },
    );
    let mut decoder = Decoder::new();
    let mut seen = Vec::new();
    decoder
        .decode(&block, |f| {
            seen.push((f.name.to_vec(), f.value.len(), f.never_indexed))
        })
        .expect("decodes");
    assert_eq!(
        seen,
        vec![
            (b":path".to_vec(), 2, false),
            (b"authorization".to_vec(), 6, true),
            (b"x-long".to_vec(), 300, false)
        ]
    );
    assert_eq!(decoder.table_len(), 0);
}

// ---------------------------------------------------------------------------------------
// The frame filter
// ---------------------------------------------------------------------------------------

#[test]
fn authorities_are_repaired_as_grpc_go_would_accept_them() {
    let cases: [(&str, Option<&str>); 7] = [
        ("http://127.0.0.1:2379", Some("127.0.0.1:2379")),
        ("https://127.0.0.1:2379", Some("127.0.0.1:2379")),
        ("https://[::1]:2379/", Some("[::1]:2379")),
        (
            "http://etcd.example:2379/some/path?x=1",
            Some("etcd.example:2379"),
        ),
        ("unix:///run/etcd.sock", None),
        ("", None),
        ("a b", None),
    ];
    for (value, want) in cases {
        assert!(!is_valid_authority(value.as_bytes()), "{value:?}");
        assert_eq!(
            repaired_authority(value.as_bytes()),
            want.map(str::as_bytes),
            "{value:?}"
        );
    }
    assert!(is_valid_authority(b"127.0.0.1:2379"));
}

#[test]
fn http1_passes_through_unchanged() {
    let request = b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n";
    let (out, filter) = filter_bytes(request, 3);
    assert_eq!(out, request);
    assert!(filter.is_passthrough());
}

#[test]
fn valid_authorities_pass_byte_for_byte() {
    let input = connection(&grpc_blocks(b"127.0.0.1:2379"));
    for step in [1, 7, input.len()] {
        let (out, filter) = filter_bytes(&input, step);
        assert_eq!(out, input, "in pieces of {step}");
        assert_eq!(filter.rewritten_blocks(), 0);
        assert!(!filter.is_passthrough(), "still following the frames");
    }
}

#[test]
fn a_scheme_in_the_authority_is_removed_and_the_table_kept_consistent() {
    let input = connection(&grpc_blocks(b"http://127.0.0.1:2379"));
    for step in [1, 5, 13, input.len()] {
        let (out, filter) = filter_bytes(&input, step);
        assert_eq!(filter.rewritten_blocks(), 3, "in pieces of {step}");
        let blocks = output_blocks(&out);
        let want = [
            (
                1,
                expected_fields(
                    Some("127.0.0.1:2379"),
                    "/etcdserverpb.Maintenance/Status",
                    false,
                ),
            ),
            (
                3,
                expected_fields(
                    Some("127.0.0.1:2379"),
                    "/etcdserverpb.Maintenance/Status",
                    false,
                ),
            ),
            (
                5,
                expected_fields(Some("127.0.0.1:2379"), "/etcdserverpb.KV/Range", true),
            ),
        ];
        assert_eq!(blocks.len(), 3);
        for ((stream, end, fields), (want_stream, want_fields)) in blocks.into_iter().zip(want) {
            assert_eq!(stream, want_stream);
            assert!(!end, "END_STREAM is kept as sent (on the DATA frame)");
            assert_eq!(fields, want_fields);
        }
        let data_frames = parse_frames(&out)
            .into_iter()
            .filter(|f| f.kind == 0x0)
            .count();
        assert_eq!(data_frames, 3, "DATA frames pass");
    }
}

#[test]
fn after_a_rewrite_later_valid_blocks_are_re_encoded_too() {
    // The first call has a bad authority, the next two a good one: the second block only
    // refers to the client's dynamic table, which h2 no longer shares.
    let mut blocks = grpc_blocks(b"http://127.0.0.1:2379");
    let mut more = Vec::new();
    incremental(&mut more, 1, b"", b"127.0.0.1:2379", false); // :authority, now 62
    indexed(&mut more, 3);
    indexed(&mut more, 6);
    // The client's table is now [:authority, x-custom, :path Range, content-type,
    // :authority (first), :path Status].
    indexed(&mut more, 67); // :path of the first call
    indexed(&mut more, 65); // content-type
    blocks.push(more);
    let (out, filter) = filter_bytes(&connection(&blocks), 11);
    assert_eq!(filter.rewritten_blocks(), 4);
    let decoded = output_blocks(&out);
    assert_eq!(
        decoded[3].2[0],
        (":authority".into(), "127.0.0.1:2379".into())
    );
    assert_eq!(
        decoded[3].2[3],
        (":path".into(), "/etcdserverpb.Maintenance/Status".into())
    );
}

/// A request block with a valid `:authority` and then a second, malformed one.
fn repeated_authority_block() -> Vec<u8> {
    let mut block = Vec::new();
    indexed(&mut block, 3); // :method POST
    indexed(&mut block, 6); // :scheme http
    incremental(&mut block, 4, b"", b"/etcdserverpb.KV/Range", true);
    incremental(&mut block, 1, b"", b"127.0.0.1:2379", true);
    incremental(&mut block, 31, b"", b"application/grpc", true);
    incremental(&mut block, 1, b"", b"http://127.0.0.1:2379", true);
    block
}

#[test]
fn a_malformed_authority_after_a_valid_one_passes_unchanged() {
    // Past a valid `:authority` the filter stops encoding what it decodes, so it cannot
    // repair a second one: the block must then reach h2 as sent, never half re-encoded.
    let input = connection(&[repeated_authority_block()]);
    for step in [1, 9, input.len()] {
        let (out, filter) = filter_bytes(&input, step);
        assert_eq!(out, input, "in pieces of {step}");
        assert_eq!(filter.rewritten_blocks(), 0);
    }
}

#[test]
fn an_unrepairable_authority_is_dropped() {
    let (out, _) = filter_bytes(&connection(&grpc_blocks(b"unix:///tmp/sock")), 64);
    let blocks = output_blocks(&out);
    assert_eq!(
        blocks[0].2,
        expected_fields(None, "/etcdserverpb.Maintenance/Status", false)
    );
}

#[test]
fn padding_priority_and_continuation_frames_are_read_and_not_written() {
    let block = grpc_blocks(b"http://127.0.0.1:2379").remove(0);
    let (a, b) = block.split_at(block.len() / 2);
    let mut headers_payload = vec![4u8]; // pad length
    headers_payload.extend_from_slice(&[0x80, 0, 0, 0, 15]); // exclusive dependency, weight
    headers_payload.extend_from_slice(a);
    headers_payload.extend_from_slice(&[0; 4]);
    let mut input = PREFACE.to_vec();
    input.extend(frame(
        FRAME_HEADERS,
        FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
        1,
        &headers_payload,
    ));
    input.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 1, b));
    let (out, filter) = filter_bytes(&input, 3);
    assert_eq!(filter.rewritten_blocks(), 1);
    let frames = parse_frames(&out);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].flags, FLAG_END_STREAM | FLAG_END_HEADERS);
    let blocks = output_blocks(&out);
    assert!(blocks[0].1, "END_STREAM kept");
    assert_eq!(
        blocks[0].2,
        expected_fields(
            Some("127.0.0.1:2379"),
            "/etcdserverpb.Maintenance/Status",
            false
        )
    );
}

#[test]
fn large_blocks_are_split_into_continuation_frames() {
    let mut block = Vec::new();
    indexed(&mut block, 3);
    indexed(&mut block, 6);
    indexed(&mut block, 4);
    incremental(&mut block, 1, b"", b"http://127.0.0.1:2379", false);
    for i in 0..5 {
        // Not indexed: 10 KiB values would not fit the table.
        int(&mut block, 0x00, 4, 0);
        string(&mut block, format!("x-big-{i}").as_bytes(), false);
        string(&mut block, &vec![b'a' + i; 10_000], true);
    }
    let mut input = PREFACE.to_vec();
    // The client's own frames: HEADERS + CONTINUATIONs of 4000 bytes.
    let mut chunks = block.chunks(4000);
    let first = chunks.next().expect("a chunk");
    input.extend(frame(FRAME_HEADERS, FLAG_END_STREAM, 1, first));
    let rest: Vec<&[u8]> = chunks.collect();
    for (i, chunk) in rest.iter().enumerate() {
        let flags = if i + 1 == rest.len() {
            FLAG_END_HEADERS
        } else {
            0
        };
        input.extend(frame(FRAME_CONTINUATION, flags, 1, chunk));
    }
    let (out, _) = filter_bytes(&input, 1000);
    let frames = parse_frames(&out);
    assert!(frames.len() >= 4, "50 KB in frames of at most 16 KiB");
    assert_eq!(frames[0].kind, FRAME_HEADERS);
    assert!(frames[1..].iter().all(|f| f.kind == FRAME_CONTINUATION));
    let blocks = output_blocks(&out);
    assert_eq!(blocks.len(), 1);
    assert!(blocks[0].1);
    assert_eq!(blocks[0].2.len(), 9);
    assert_eq!(blocks[0].2[3].1, "127.0.0.1:2379");
    assert_eq!(blocks[0].2[8].1, "e".repeat(10_000));
}

#[test]
fn what_cannot_be_followed_is_forwarded_unchanged() {
    // A decoding error before any rewrite: the bytes go on as they came.
    let mut input = PREFACE.to_vec();
    input.extend(headers_frame(
        1,
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        true,
    ));
    input.extend(connection(&grpc_blocks(b"http://127.0.0.1:2379"))[PREFACE.len()..].iter());
    let (out, filter) = filter_bytes(&input, 9);
    assert_eq!(out, input);
    assert!(filter.is_passthrough());

    // A DATA frame in the middle of a header block (a protocol error h2 reports).
    let mut input = PREFACE.to_vec();
    input.extend(frame(FRAME_HEADERS, 0, 1, &[0x82]));
    input.extend(data_frame(1, b"x", true));
    let (out, filter) = filter_bytes(&input, 4);
    assert_eq!(out, input);
    assert!(filter.is_passthrough());

    // A header block larger than the filter holds.
    let mut input = PREFACE.to_vec();
    input.extend(frame(FRAME_HEADERS, 0, 1, &vec![0u8; MAX_HEADER_BLOCK]));
    let (out, filter) = filter_bytes(&input, 100_000);
    assert_eq!(out, input);
    assert!(filter.is_passthrough());

    // A connection that ends inside a frame.
    let mut input = connection(&grpc_blocks(b"127.0.0.1:2379"));
    input.extend(&headers_frame(7, &[0x82, 0x86], true)[..6]);
    let (out, _) = filter_bytes(&input, 50);
    assert_eq!(out, input);
}

// ---------------------------------------------------------------------------------------
// Through the real HTTP/2 server (hyper and h2, configured as keelson's listeners are)
// ---------------------------------------------------------------------------------------

/// The path of the last request of every connection the server tests send: h2 handles
/// streams in order, so once it reached the service every earlier one was handled too.
const SENTINEL: &str = "/sentinel";

fn sentinel_block() -> Vec<u8> {
    let mut block = Vec::new();
    indexed(&mut block, 3);
    indexed(&mut block, 6);
    hpack::encode_literal(
        &mut block,
        Field {
            name: b":path",
            value: SENTINEL.as_bytes(),
            never_indexed: false,
        },
    );
    hpack::encode_literal(
        &mut block,
        Field {
            name: b":authority",
            value: b"127.0.0.1:2379",
            never_indexed: false,
        },
    );
    block
}

/// Serves one connection with keelson's builder; returns the (authority, path) of every
/// request that reached the service before the sentinel.
async fn serve_requests(blocks: &[Vec<u8>], fix: bool) -> Vec<(Option<String>, String)> {
    let mut blocks = blocks.to_vec();
    blocks.push(sentinel_block());
    let input = connection(&blocks);
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let service =
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let _ = tx.send((
                request.uri().authority().map(|a| a.to_string()),
                request.uri().path().to_string(),
            ));
            async {
                Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::empty()))
            }
        });
    let builder = crate::transport::connection_builder();
    let served = tokio::spawn(async move {
        if fix {
            let io = hyper_util::rt::TokioIo::new(AuthorityFix::new(server));
            let _ = builder.serve_connection(io, service).await;
        } else {
            let io = hyper_util::rt::TokioIo::new(server);
            let _ = builder.serve_connection(io, service).await;
        }
    });
    client
        .write_all(&input)
        .await
        .expect("write the client's frames");
    let mut seen = Vec::new();
    let collect = async {
        while let Some(request) = rx.recv().await {
            if request.1 == SENTINEL {
                return;
            }
            seen.push(request);
        }
        panic!("the connection ended before the last request was served");
    };
    tokio::time::timeout(Duration::from_secs(10), collect)
        .await
        .expect("the server served the last request within 10 s");
    served.abort();
    seen
}

#[tokio::test]
async fn h2_refuses_a_scheme_in_the_authority_without_the_filter_and_serves_it_with() {
    let blocks = grpc_blocks(b"http://127.0.0.1:2379");
    let unfixed = serve_requests(&blocks, false).await;
    assert!(
        unfixed.is_empty(),
        "h2 is expected to reset such streams itself (else this filter is not needed): {unfixed:?}"
    );
    let fixed = serve_requests(&blocks, true).await;
    let authority = Some("127.0.0.1:2379".to_string());
    assert_eq!(
        fixed,
        vec![
            (
                authority.clone(),
                "/etcdserverpb.Maintenance/Status".to_string()
            ),
            (
                authority.clone(),
                "/etcdserverpb.Maintenance/Status".to_string()
            ),
            (authority, "/etcdserverpb.KV/Range".to_string()),
        ]
    );
}

#[tokio::test]
async fn h2_serves_valid_authorities_through_the_filter_unchanged() {
    let blocks = grpc_blocks(b"127.0.0.1:2379");
    let direct = serve_requests(&blocks, false).await;
    let fixed = serve_requests(&blocks, true).await;
    assert_eq!(direct.len(), 3);
    assert_eq!(fixed, direct);
}

#[tokio::test]
async fn h2_answers_a_repeated_authority_as_it_would_without_the_filter() {
    let blocks = [repeated_authority_block()];
    let direct = serve_requests(&blocks, false).await;
    let fixed = serve_requests(&blocks, true).await;
    assert_eq!(fixed, direct);
}
