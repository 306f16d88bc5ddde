//! The frames of the enclave–host protocol: request heads (read by the host from the
//! enclave), answer heads (read by the enclave from the untrusted host), the error texts
//! it relays, and the credentials JSON. Any input: decoding returns (never panics), what
//! decodes re-encodes to the same bytes, no head announces more than its limit, and
//! error texts come out printable and bounded. Also the telemetry frames the host reads
//! from enclaves: heads within their limit, samples that parse encode as exposition text.

#![no_main]

use enclaveid_checks::telemetry::{self, Exposition, FrameKind, Health, Hello};
use enclaveid_checks::wire::{self, AnswerHead, Credentials, Op};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 5 {
        0 => {
            let Some(head) = rest.first_chunk::<{ wire::REQUEST_HEAD }>() else {
                return;
            };
            if let Ok((op, len)) = wire::decode_request_head(head) {
                assert!(len <= wire::MAX_REQUEST);
                let again = wire::encode_request(op, &vec![0; len]);
                assert_eq!(
                    &again[..wire::REQUEST_HEAD],
                    head,
                    "request head round trip"
                );
            }
        }
        1 => {
            let Some((&op, rest)) = rest.split_first() else {
                return;
            };
            let (Some(op), Some(head)) = (
                Op::from_byte(op),
                rest.first_chunk::<{ wire::ANSWER_HEAD }>(),
            ) else {
                return;
            };
            match wire::decode_answer_head(head, op) {
                Ok(AnswerHead::Ok(len)) => {
                    assert!(len <= op.answer_limit());
                    let again = wire::encode_answer(Ok(&vec![0; len]));
                    assert_eq!(&again[..wire::ANSWER_HEAD], head, "answer head round trip");
                }
                Ok(AnswerHead::Refused(len)) => assert!(len <= wire::MAX_ERROR),
                Err(_) => {}
            }
        }
        2 => {
            let text = wire::sanitize(rest);
            assert!(text.chars().count() <= wire::MAX_ERROR);
            assert!(
                text.chars().all(|c| c == ' ' || c.is_ascii_graphic()),
                "{text:?}"
            );
        }
        4 => {
            if let Some(head) = rest.first_chunk::<{ telemetry::FRAME_HEAD }>()
                && let Ok((kind, len)) = telemetry::decode_frame_head(head)
            {
                assert!(len <= telemetry::MAX_FRAME);
                let payload = &rest[telemetry::FRAME_HEAD..];
                match kind {
                    FrameKind::Hello => drop(telemetry::decode::<Hello>(kind, payload)),
                    FrameKind::Health => drop(telemetry::decode::<Health>(kind, payload)),
                    FrameKind::Log => drop(serde_json::from_slice::<serde_json::Value>(payload)),
                    FrameKind::Metrics => {
                        if let Ok(samples) = telemetry::decode_samples(payload) {
                            let mut exposition = Exposition::default();
                            exposition.add(vec![("enclave".into(), "cid:16".into())], samples);
                            assert!(exposition.text().ends_with("# EOF\n"));
                        }
                    }
                }
            }
        }
        _ => {
            if let Ok(credentials) = Credentials::from_json(rest) {
                let json = credentials.to_json();
                let again = Credentials::from_json(&json).expect("re-encoded credentials parse");
                assert_eq!(*again.to_json(), *json, "credentials round trip");
            }
        }
    }
});
