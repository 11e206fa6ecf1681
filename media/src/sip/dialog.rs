//! SIP dialogs (RFC 3261 §12): the state a B2BUA leg keeps to send requests
//! inside a call (BYE, ACK) and to recognise requests that belong to it.

use super::Transport;
use rsip::{Header, Headers, Method, Request, Version};

/// Dialog state (§12: early after a provisional with a tag, confirmed after 2xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    /// Created by a 1xx with a To tag.
    Early,
    /// Created or confirmed by a 2xx.
    Confirmed,
    /// Ended by BYE or a failure.
    Terminated,
}

/// One side's dialog state (§12.1.1 UAS / §12.1.2 UAC).
#[derive(Debug, Clone)]
pub struct Dialog {
    /// Call-ID shared by both ends.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's tag (None until it answered with one, UAC side).
    pub remote_tag: Option<String>,
    /// Our URI as a name-addr, without tag (From of our requests).
    pub local_uri: String,
    /// The peer's URI as a name-addr, without tag (To of our requests).
    pub remote_uri: String,
    /// Where in-dialog requests go: the peer's Contact (§12.1.1).
    pub remote_target: String,
    /// CSeq of our last request (§12.2.1.1: incremented per request).
    pub local_cseq: u32,
    /// CSeq of the peer's last request (§12.2.2: lower ones are rejected).
    pub remote_cseq: Option<u32>,
    /// Early / confirmed / terminated.
    pub state: DialogState,
}

impl Dialog {
    /// Whether a request with these identifiers belongs to this dialog (§12.2.2):
    /// same Call-ID, its To tag is our tag, its From tag the peer's.
    pub fn matches(&self, call_id: &str, to_tag: Option<&str>, from_tag: Option<&str>) -> bool {
        self.call_id == call_id
            && to_tag == Some(self.local_tag.as_str())
            && (self.remote_tag.is_none() || from_tag == self.remote_tag.as_deref())
    }

    /// Check and record the peer's CSeq (§12.2.2: out-of-order requests get 500).
    pub fn accept_remote_cseq(&mut self, cseq: u32) -> bool {
        if self.remote_cseq.is_some_and(|last| cseq <= last) {
            return false;
        }
        self.remote_cseq = Some(cseq);
        true
    }

    /// Build a request inside the dialog (§12.2.1.1). ACK reuses `cseq` of the INVITE
    /// it acknowledges (pass it as `ack_cseq`); other methods take the next number.
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &mut self,
        method: Method,
        ack_cseq: Option<u32>,
        branch: &str,
        via_host: &str,
        transport: Transport,
        contact: &str,
        server: &str,
    ) -> Request {
        let cseq = match ack_cseq {
            Some(n) => n,
            None => {
                self.local_cseq += 1;
                self.local_cseq
            }
        };
        let mut headers = Headers::default();
        headers.push(Header::Via(
            format!(
                "SIP/2.0/{} {via_host};branch={branch};rport",
                transport.as_str()
            )
            .into(),
        ));
        headers.push(Header::MaxForwards(70.into()));
        headers.push(Header::From(
            format!("{};tag={}", self.local_uri, self.local_tag).into(),
        ));
        let to = match &self.remote_tag {
            Some(t) => format!("{};tag={t}", self.remote_uri),
            None => self.remote_uri.clone(),
        };
        headers.push(Header::To(to.into()));
        headers.push(Header::CallId(self.call_id.clone().into()));
        headers.push(Header::CSeq(format!("{cseq} {method}").into()));
        headers.push(Header::Contact(format!("<{contact}>").into()));
        headers.push(Header::UserAgent(server.to_string().into()));
        let uri = rsip::Uri::try_from(self.remote_target.as_str()).unwrap_or_else(|_| {
            rsip::Uri::try_from(super::message::uri_of(&self.remote_uri)).unwrap_or_default()
        });
        Request {
            method,
            uri,
            version: Version::V2,
            headers,
            body: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message;

    fn dialog() -> Dialog {
        Dialog {
            call_id: "c1".into(),
            local_tag: "us".into(),
            remote_tag: Some("them".into()),
            local_uri: "<sip:1001@127.0.0.1>".into(),
            remote_uri: "<sip:1002@127.0.0.1>".into(),
            remote_target: "sip:1002@127.0.0.1:5070".into(),
            local_cseq: 1,
            remote_cseq: Some(5),
            state: DialogState::Confirmed,
        }
    }

    #[test]
    fn in_dialog_request_uses_remote_target_and_next_cseq() {
        // RFC 3261 §12.2.1.1: Request-URI = remote target; CSeq incremented; tags set.
        let mut d = dialog();
        let bye = d.request(
            Method::Bye,
            None,
            "z9hG4bKa",
            "127.0.0.1:5060",
            Transport::Udp,
            "sip:127.0.0.1:5060",
            "t",
        );
        let bytes = crate::sip::to_bytes(bye);
        let msg = message::parse(&bytes).unwrap();
        let h = message::headers(&msg);
        assert_eq!(message::cseq(h), Some((2, Method::Bye)));
        assert_eq!(message::tag(message::to(h).unwrap()), Some("them"));
        assert_eq!(message::tag(message::from(h).unwrap()), Some("us"));
        let rsip::SipMessage::Request(r) = msg else {
            panic!()
        };
        assert_eq!(r.uri.to_string(), "sip:1002@127.0.0.1:5070");
        // ACK keeps the INVITE's CSeq (§13.2.2.4)
        let ack = d.request(
            Method::Ack,
            Some(1),
            "z9hG4bKb",
            "h",
            Transport::Udp,
            "sip:h",
            "t",
        );
        assert!(crate::sip::to_bytes(ack)
            .windows(11)
            .any(|w| w == b"CSeq: 1 ACK"));
    }

    #[test]
    fn matching_and_cseq_order() {
        // RFC 3261 §12.2.2.
        let mut d = dialog();
        assert!(d.matches("c1", Some("us"), Some("them")));
        assert!(!d.matches("c1", Some("other"), Some("them")));
        assert!(!d.matches("c2", Some("us"), Some("them")));
        assert!(!d.accept_remote_cseq(5));
        assert!(d.accept_remote_cseq(6));
    }
}
