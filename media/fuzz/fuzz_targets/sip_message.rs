//! Fuzz the SIP message entry point: datagram parsing, the error answer for
//! rejected requests, stream framing, and the SDP reader/rewriter the B2BUA
//! applies to message bodies. None of them may panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_media::sdp::Sdp;
use tandem_media::sip::message;

fuzz_target!(|data: &[u8]| {
    match message::parse(data) {
        Ok(msg) => {
            let h = message::headers(&msg);
            let _ = message::cseq(h);
            for c in message::contacts(h) {
                let _ = message::uri_user(message::uri_of(c));
                let _ = message::param(c, "expires");
            }
            if let Some(from) = message::from(h) {
                let _ = message::tag(from);
                let _ = message::display_name(from);
            }
            // What we send back must itself parse.
            if let rsip::SipMessage::Request(req) = &msg {
                let resp = tandem_media::sip::response(req, 200, Some("t"), "fuzz");
                let bytes = tandem_media::sip::to_bytes(resp);
                assert!(message::parse(&bytes).is_ok(), "own response does not parse");
            }
            if let Ok(sdp) = Sdp::parse(msg.body()) {
                let _ = sdp.audio();
                let _ = sdp.rewrite("127.0.0.1:40000".parse().unwrap());
            }
        }
        Err(e) => {
            let _ = message::error_response(data, &e, "fuzz");
        }
    }
    let skip = message::skip_keepalive(data);
    let _ = message::frame(&data[skip..]);
});
