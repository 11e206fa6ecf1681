//! The SIP transaction layer of RFC 3261 §17 as pure state machines.
//!
//! Four machines: INVITE client (§17.1.1), non-INVITE client (§17.1.2), INVITE
//! server (§17.2.1, with the Accepted state of RFC 6026 §7.1) and non-INVITE
//! server (§17.2.2). Each is fed events with the current time and answers with
//! [`TxAction`]s; [`ClientTx::next_deadline`] / [`ServerTx::next_deadline`] tell the
//! driver when to call `poll(now)` for the timers A, B, D, E, F, G, H, I, J, K.
//! Retransmissions (A, E, G) happen only over unreliable transports.
//!
//! ```text
//!  INVITE client:  Calling ─1xx─▶ Proceeding ─300-699─▶ Completed ─D─▶ Terminated
//!                     └──────────2xx──────────────────────────────────▶ Terminated
//!  INVITE server:  Proceeding ─2xx─▶ Accepted ─L─▶ Terminated
//!                       └─300-699─▶ Completed ─ACK─▶ Confirmed ─I─▶ Terminated
//! ```

use std::time::{Duration, Instant};

/// Timer base values (RFC 3261 §17.1.1.1 and Table 4).
#[derive(Debug, Clone, Copy)]
pub struct TimerConfig {
    /// RTT estimate, default 500 ms.
    pub t1: Duration,
    /// Longest retransmit interval for non-INVITE requests and INVITE responses, 4 s.
    pub t2: Duration,
    /// Longest time a message stays in the network, 5 s.
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// The three timers a transaction can run at once.
#[derive(Debug, Clone, Default)]
struct Deadlines {
    /// Next retransmission (A, E, G).
    retransmit_at: Option<Instant>,
    /// Give up (B, F, H, L).
    timeout_at: Option<Instant>,
    /// Leave a lingering state (D, I, J, K).
    end_at: Option<Instant>,
}

impl Deadlines {
    fn next(&self) -> Option<Instant> {
        [self.retransmit_at, self.timeout_at, self.end_at]
            .into_iter()
            .flatten()
            .min()
    }
}

/// What a transaction asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxAction {
    /// Transmit these bytes to the transaction's peer (request or response, or a retransmission).
    Send(Vec<u8>),
    /// INVITE client got a 300-699 final response: build the ACK (§17.1.1.3) and hand it
    /// to [`ClientTx::ack_built`].
    NeedAck,
    /// Timer B/F (no final response), H (no ACK for a non-2xx) or L without ACK for a
    /// 2xx: tell the transaction user.
    Timeout,
    /// The transaction is over and can be forgotten.
    Terminated,
}

/// Whether a transaction belongs to an INVITE (different state machines, §17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxKind {
    /// INVITE transaction.
    Invite,
    /// Any other method (ACK never creates one).
    NonInvite,
}

/// States of the client machines (§17.1.1.2, §17.1.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// INVITE sent, nothing heard yet.
    Calling,
    /// Non-INVITE sent, nothing heard yet.
    Trying,
    /// A provisional response arrived.
    Proceeding,
    /// A final response arrived; absorbing retransmissions.
    Completed,
    /// Done.
    Terminated,
}

/// A client transaction (§17.1).
#[derive(Debug, Clone)]
pub struct ClientTx {
    /// INVITE or not.
    kind: TxKind,
    /// Current state.
    state: ClientState,
    /// Whether to retransmit (UDP).
    unreliable: bool,
    /// The request, for retransmissions.
    request: Vec<u8>,
    /// The ACK for a non-2xx final response (INVITE only), resent on retransmitted finals.
    ack: Option<Vec<u8>>,
    /// Timer values.
    timers: TimerConfig,
    /// Timers A/E (retransmit), B/F (timeout), D/K (end).
    deadlines: Deadlines,
    /// Current retransmit interval.
    interval: Duration,
}

impl ClientTx {
    /// Start a transaction: the returned actions send the request (§17.1.1.2, §17.1.2.2).
    pub fn start(
        kind: TxKind,
        unreliable: bool,
        request: Vec<u8>,
        timers: TimerConfig,
        now: Instant,
    ) -> (ClientTx, Vec<TxAction>) {
        let tx = ClientTx {
            kind,
            state: match kind {
                TxKind::Invite => ClientState::Calling,
                TxKind::NonInvite => ClientState::Trying,
            },
            unreliable,
            ack: None,
            timers,
            deadlines: Deadlines {
                // Timer A / E start at T1 (UDP only).
                retransmit_at: unreliable.then(|| now + timers.t1),
                // Timer B / F = 64*T1.
                timeout_at: Some(now + timers.t1 * 64),
                end_at: None,
            },
            interval: timers.t1,
            request: request.clone(),
        };
        (tx, vec![TxAction::Send(request)])
    }

    /// Current state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// Whether a provisional response has been received (CANCEL may be sent, §9.1).
    pub fn provisional_seen(&self) -> bool {
        self.state != ClientState::Calling && self.state != ClientState::Trying
    }

    /// A response matched this transaction (§17.1.3). Returns whether it goes up to
    /// the transaction user, and the actions.
    pub fn on_response(&mut self, code: u16, now: Instant) -> (bool, Vec<TxAction>) {
        let mut actions = Vec::new();
        let provisional = code < 200;
        let pass = match (self.kind, self.state) {
            (_, ClientState::Terminated) => false,
            (TxKind::Invite, ClientState::Calling | ClientState::Proceeding) => {
                if provisional {
                    // §17.1.1.2: 1xx → Proceeding, stop retransmitting.
                    self.state = ClientState::Proceeding;
                    self.deadlines.retransmit_at = None;
                } else if code < 300 {
                    // 2xx → Terminated; the TU acknowledges it (§13.2.2.4).
                    self.terminate(&mut actions);
                } else {
                    // 300-699 → Completed, ACK, timer D (32 s UDP, 0 reliable).
                    self.state = ClientState::Completed;
                    self.deadlines.retransmit_at = None;
                    self.deadlines.timeout_at = None;
                    self.deadlines.end_at = Some(if self.unreliable {
                        now + Duration::from_secs(32)
                    } else {
                        now
                    });
                    actions.push(TxAction::NeedAck);
                }
                true
            }
            (TxKind::Invite, ClientState::Completed) => {
                // Retransmitted final response: resend ACK, don't pass up (§17.1.1.2).
                if code >= 300 {
                    if let Some(ack) = &self.ack {
                        actions.push(TxAction::Send(ack.clone()));
                    }
                }
                false
            }
            (TxKind::NonInvite, ClientState::Trying | ClientState::Proceeding) => {
                if provisional {
                    // §17.1.2.2: retransmissions continue at T2 in Proceeding.
                    self.state = ClientState::Proceeding;
                    if self.deadlines.retransmit_at.is_some() {
                        self.interval = self.timers.t2;
                        self.deadlines.retransmit_at = Some(now + self.timers.t2);
                    }
                } else {
                    // Final → Completed, timer K = T4 (UDP) or 0.
                    self.state = ClientState::Completed;
                    self.deadlines.retransmit_at = None;
                    self.deadlines.timeout_at = None;
                    self.deadlines.end_at = Some(if self.unreliable {
                        now + self.timers.t4
                    } else {
                        now
                    });
                }
                true
            }
            (_, _) => false,
        };
        (pass, actions)
    }

    /// The driver built the ACK asked for by [`TxAction::NeedAck`]: send it and keep it.
    pub fn ack_built(&mut self, ack: Vec<u8>) -> Vec<TxAction> {
        self.ack = Some(ack.clone());
        vec![TxAction::Send(ack)]
    }

    /// When [`ClientTx::poll`] must be called next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.next()
    }

    /// Fire the timers that are due.
    pub fn poll(&mut self, now: Instant) -> Vec<TxAction> {
        let mut actions = Vec::new();
        if self.state == ClientState::Terminated {
            return actions;
        }
        if self.deadlines.timeout_at.is_some_and(|t| t <= now) {
            // Timer B / F: the TU is told of the timeout (§17.1.1.2, §17.1.2.2).
            actions.push(TxAction::Timeout);
            self.terminate(&mut actions);
            return actions;
        }
        if self.deadlines.end_at.is_some_and(|t| t <= now) {
            // Timer D / K.
            self.terminate(&mut actions);
            return actions;
        }
        if let Some(at) = self.deadlines.retransmit_at.filter(|t| *t <= now) {
            actions.push(TxAction::Send(self.request.clone()));
            self.interval = match self.kind {
                // Timer A doubles without cap (§17.1.1.2).
                TxKind::Invite => self.interval * 2,
                // Timer E doubles up to T2 (§17.1.2.2).
                TxKind::NonInvite => (self.interval * 2).min(self.timers.t2),
            };
            self.deadlines.retransmit_at = Some(at + self.interval);
        }
        actions
    }

    fn terminate(&mut self, actions: &mut Vec<TxAction>) {
        self.state = ClientState::Terminated;
        self.deadlines = Deadlines::default();
        actions.push(TxAction::Terminated);
    }

    /// True once nothing more will happen.
    pub fn is_terminated(&self) -> bool {
        self.state == ClientState::Terminated
    }
}

/// States of the server machines (§17.2.1, §17.2.2, RFC 6026 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Non-INVITE received, no response yet.
    Trying,
    /// A provisional response was sent (INVITE starts here).
    Proceeding,
    /// A final response was sent; absorbing request retransmissions.
    Completed,
    /// INVITE only: a 2xx was sent, retransmitted until the ACK (RFC 6026 §7.1).
    Accepted,
    /// INVITE only: the ACK for a non-2xx arrived.
    Confirmed,
    /// Done.
    Terminated,
}

/// A server transaction (§17.2).
#[derive(Debug, Clone)]
pub struct ServerTx {
    /// INVITE or not.
    kind: TxKind,
    /// Current state.
    state: ServerState,
    /// Whether to retransmit responses (UDP).
    unreliable: bool,
    /// Last response sent, resent when the request is retransmitted.
    last_response: Option<Vec<u8>>,
    /// Timer values.
    timers: TimerConfig,
    /// Timers G / 2xx retransmission, H / L (timeout), I / J (end).
    deadlines: Deadlines,
    /// Current retransmit interval.
    interval: Duration,
    /// Whether the ACK for a 2xx has been seen (Accepted state).
    acked: bool,
}

impl ServerTx {
    /// A new server transaction for a request just received (§17.2.1: INVITE starts in
    /// Proceeding; §17.2.2: non-INVITE in Trying).
    pub fn new(kind: TxKind, unreliable: bool, timers: TimerConfig) -> ServerTx {
        ServerTx {
            kind,
            state: match kind {
                TxKind::Invite => ServerState::Proceeding,
                TxKind::NonInvite => ServerState::Trying,
            },
            unreliable,
            last_response: None,
            timers,
            deadlines: Deadlines::default(),
            interval: timers.t1,
            acked: false,
        }
    }

    /// Current state.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// Whether a final response has been sent.
    pub fn final_sent(&self) -> bool {
        !matches!(self.state, ServerState::Trying | ServerState::Proceeding)
    }

    /// The request was received again: answer with the last response, if any
    /// (§17.2.1 Proceeding/Completed, §17.2.2 Proceeding/Completed). Never passed up.
    pub fn on_request_retransmission(&mut self) -> Vec<TxAction> {
        match self.state {
            ServerState::Proceeding | ServerState::Completed => self
                .last_response
                .clone()
                .map(TxAction::Send)
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The TU sends a response through this transaction.
    pub fn send_response(&mut self, code: u16, bytes: Vec<u8>, now: Instant) -> Vec<TxAction> {
        let mut actions = Vec::new();
        match self.state {
            ServerState::Trying | ServerState::Proceeding => {}
            // A TU may not send more than one final response; drop extras.
            _ => return actions,
        }
        self.last_response = Some(bytes.clone());
        actions.push(TxAction::Send(bytes));
        let t1 = self.timers.t1;
        match (self.kind, code) {
            (_, 100..=199) => self.state = ServerState::Proceeding,
            (TxKind::Invite, 200..=299) => {
                // RFC 6026 §7.1 Accepted; 2xx retransmitted per RFC 3261 §13.3.1.4 until
                // the ACK, for at most 64*T1 (timer L).
                self.state = ServerState::Accepted;
                self.deadlines.retransmit_at = self.unreliable.then(|| now + t1);
                self.interval = t1;
                self.deadlines.timeout_at = Some(now + t1 * 64);
            }
            (TxKind::Invite, _) => {
                // §17.2.1: Completed, timer G (UDP) and H = 64*T1.
                self.state = ServerState::Completed;
                self.deadlines.retransmit_at = self.unreliable.then(|| now + t1);
                self.interval = t1;
                self.deadlines.timeout_at = Some(now + t1 * 64);
            }
            (TxKind::NonInvite, _) => {
                // §17.2.2: Completed, timer J = 64*T1 (UDP) or 0.
                self.state = ServerState::Completed;
                self.deadlines.end_at = Some(if self.unreliable { now + t1 * 64 } else { now });
            }
        }
        actions
    }

    /// The ACK for this INVITE arrived (for a non-2xx it matches the transaction,
    /// §17.2.1; for a 2xx the TU matched it to the dialog, §13.3.1.4).
    pub fn on_ack(&mut self, now: Instant) -> Vec<TxAction> {
        match self.state {
            ServerState::Completed => {
                // → Confirmed, timer I = T4 (UDP) or 0.
                self.state = ServerState::Confirmed;
                self.deadlines.retransmit_at = None;
                self.deadlines.timeout_at = None;
                self.deadlines.end_at = Some(if self.unreliable {
                    now + self.timers.t4
                } else {
                    now
                });
            }
            ServerState::Accepted => {
                self.acked = true;
                self.deadlines.retransmit_at = None;
            }
            _ => {}
        }
        Vec::new()
    }

    /// When [`ServerTx::poll`] must be called next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.next()
    }

    /// Fire the timers that are due.
    pub fn poll(&mut self, now: Instant) -> Vec<TxAction> {
        let mut actions = Vec::new();
        if self.state == ServerState::Terminated {
            return actions;
        }
        if self.deadlines.timeout_at.is_some_and(|t| t <= now) {
            // Timer H (Completed) or L (Accepted).
            if !(self.state == ServerState::Accepted && self.acked) {
                actions.push(TxAction::Timeout);
            }
            self.terminate(&mut actions);
            return actions;
        }
        if self.deadlines.end_at.is_some_and(|t| t <= now) {
            // Timer I / J.
            self.terminate(&mut actions);
            return actions;
        }
        if let Some(at) = self.deadlines.retransmit_at.filter(|t| *t <= now) {
            if let Some(r) = &self.last_response {
                actions.push(TxAction::Send(r.clone()));
            }
            // Timer G: min(2*previous, T2) (§17.2.1); same for 2xx (§13.3.1.4).
            self.interval = (self.interval * 2).min(self.timers.t2);
            self.deadlines.retransmit_at = Some(at + self.interval);
        }
        actions
    }

    fn terminate(&mut self, actions: &mut Vec<TxAction>) {
        self.state = ServerState::Terminated;
        self.deadlines = Deadlines::default();
        actions.push(TxAction::Terminated);
    }

    /// True once nothing more will happen.
    pub fn is_terminated(&self) -> bool {
        self.state == ServerState::Terminated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Drive `poll` at every deadline up to `until`, collecting the times of sends.
    fn run_client(tx: &mut ClientTx, start: Instant, until: Duration) -> Vec<(Duration, TxAction)> {
        let mut out = Vec::new();
        for _ in 0..1000 {
            let Some(at) = tx.next_deadline() else { break };
            if at > start + until {
                break;
            }
            for a in tx.poll(at) {
                out.push((at - start, a));
            }
        }
        out
    }

    #[test]
    fn invite_client_timer_a_doubles_and_timer_b_times_out() {
        // RFC 3261 §17.1.1.2: A = T1, 2T1, 4T1, ...; B = 64*T1 → timeout.
        let now = Instant::now();
        let (mut tx, first) = ClientTx::start(
            TxKind::Invite,
            true,
            b"INV".to_vec(),
            TimerConfig::default(),
            now,
        );
        assert_eq!(first, vec![TxAction::Send(b"INV".to_vec())]);
        let events = run_client(&mut tx, now, Duration::from_secs(40));
        let sends: Vec<u64> = events
            .iter()
            .filter(|(_, a)| matches!(a, TxAction::Send(_)))
            .map(|(t, _)| t.as_millis() as u64)
            .collect();
        assert_eq!(sends, vec![500, 1500, 3500, 7500, 15500, 31500]);
        let (t, a) = &events[events.len() - 2];
        assert_eq!((*t, a), (Duration::from_secs(32), &TxAction::Timeout));
        assert!(tx.is_terminated());
    }

    #[test]
    fn invite_client_over_tcp_never_retransmits() {
        // RFC 3261 §17.1.1.2: timer A only for unreliable transports.
        let now = Instant::now();
        let (mut tx, _) = ClientTx::start(
            TxKind::Invite,
            false,
            b"INV".to_vec(),
            TimerConfig::default(),
            now,
        );
        let events = run_client(&mut tx, now, Duration::from_secs(40));
        assert_eq!(
            events,
            vec![
                (Duration::from_secs(32), TxAction::Timeout),
                (Duration::from_secs(32), TxAction::Terminated)
            ]
        );
    }

    #[test]
    fn invite_client_1xx_stops_retransmission_and_non2xx_is_acked() {
        // RFC 3261 §17.1.1.2: Proceeding on 1xx; 300-699 → ACK, Completed, timer D.
        let now = Instant::now();
        let (mut tx, _) = ClientTx::start(
            TxKind::Invite,
            true,
            b"INV".to_vec(),
            TimerConfig::default(),
            now,
        );
        let (pass, acts) = tx.on_response(180, now + ms(100));
        assert!(pass && acts.is_empty());
        assert_eq!(tx.state(), ClientState::Proceeding);
        assert!(tx.provisional_seen());
        assert!(
            tx.poll(now + ms(600)).is_empty(),
            "no retransmission in Proceeding"
        );
        let (pass, acts) = tx.on_response(486, now + ms(1000));
        assert!(pass);
        assert_eq!(acts, vec![TxAction::NeedAck]);
        assert_eq!(
            tx.ack_built(b"ACK".to_vec()),
            vec![TxAction::Send(b"ACK".to_vec())]
        );
        // Retransmitted 486 → ACK again, not passed up.
        let (pass, acts) = tx.on_response(486, now + ms(1500));
        assert!(!pass);
        assert_eq!(acts, vec![TxAction::Send(b"ACK".to_vec())]);
        // Timer D = 32 s for UDP.
        assert_eq!(
            tx.next_deadline(),
            Some(now + ms(1000) + Duration::from_secs(32))
        );
        assert_eq!(
            tx.poll(now + Duration::from_secs(34)),
            vec![TxAction::Terminated]
        );
    }

    #[test]
    fn invite_client_2xx_terminates_and_passes_up() {
        // RFC 3261 §17.1.1.2: a 2xx terminates the transaction; the TU ACKs.
        let now = Instant::now();
        let (mut tx, _) = ClientTx::start(
            TxKind::Invite,
            true,
            b"INV".to_vec(),
            TimerConfig::default(),
            now,
        );
        let (pass, acts) = tx.on_response(200, now);
        assert!(pass);
        assert_eq!(acts, vec![TxAction::Terminated]);
    }

    #[test]
    fn non_invite_client_timer_e_caps_at_t2_and_timer_k() {
        // RFC 3261 §17.1.2.2: E doubles to T2; F = 64*T1; K = T4 after final.
        let now = Instant::now();
        let (mut tx, _) = ClientTx::start(
            TxKind::NonInvite,
            true,
            b"BYE".to_vec(),
            TimerConfig::default(),
            now,
        );
        let events = run_client(&mut tx, now, Duration::from_secs(12));
        let sends: Vec<u64> = events.iter().map(|(t, _)| t.as_millis() as u64).collect();
        assert_eq!(sends, vec![500, 1500, 3500, 7500, 11500]);
        let (pass, _) = tx.on_response(200, now + Duration::from_secs(12));
        assert!(pass);
        assert_eq!(tx.state(), ClientState::Completed);
        let (pass, _) = tx.on_response(200, now + Duration::from_secs(13));
        assert!(!pass, "retransmitted final absorbed");
        assert_eq!(tx.next_deadline(), Some(now + Duration::from_secs(17)));
        assert_eq!(
            tx.poll(now + Duration::from_secs(17)),
            vec![TxAction::Terminated]
        );
    }

    #[test]
    fn non_invite_client_timer_f_times_out() {
        // RFC 3261 §17.1.2.2: timer F fires at 64*T1 → timeout to the TU.
        let now = Instant::now();
        let (mut tx, _) = ClientTx::start(
            TxKind::NonInvite,
            true,
            b"BYE".to_vec(),
            TimerConfig::default(),
            now,
        );
        let events = run_client(&mut tx, now, Duration::from_secs(40));
        assert!(events.contains(&(Duration::from_secs(32), TxAction::Timeout)));
        // after 4 s every retransmission is T2 apart
        let sends: Vec<u64> = events
            .iter()
            .filter(|(_, a)| matches!(a, TxAction::Send(_)))
            .map(|(t, _)| t.as_millis() as u64)
            .collect();
        assert_eq!(sends.last(), Some(&31500));
    }

    #[test]
    fn invite_server_non2xx_timer_g_h_and_ack() {
        // RFC 3261 §17.2.1: G = T1 doubling to T2, H = 64*T1; ACK → Confirmed, I = T4.
        let now = Instant::now();
        let mut tx = ServerTx::new(TxKind::Invite, true, TimerConfig::default());
        assert_eq!(tx.send_response(100, b"100".to_vec(), now).len(), 1);
        assert_eq!(
            tx.on_request_retransmission(),
            vec![TxAction::Send(b"100".to_vec())]
        );
        tx.send_response(486, b"486".to_vec(), now);
        assert_eq!(tx.state(), ServerState::Completed);
        assert!(
            tx.send_response(200, b"200".to_vec(), now).is_empty(),
            "one final only"
        );
        let mut sends = Vec::new();
        for _ in 0..10 {
            let at = tx.next_deadline().unwrap();
            if at > now + Duration::from_secs(10) {
                break;
            }
            if !tx.poll(at).is_empty() {
                sends.push((at - now).as_millis());
            }
        }
        assert_eq!(sends, vec![500, 1500, 3500, 7500]);
        tx.on_ack(now + Duration::from_secs(10));
        assert_eq!(tx.state(), ServerState::Confirmed);
        assert!(tx.on_request_retransmission().is_empty());
        assert_eq!(tx.next_deadline(), Some(now + Duration::from_secs(15)));
        assert_eq!(
            tx.poll(now + Duration::from_secs(15)),
            vec![TxAction::Terminated]
        );
    }

    #[test]
    fn invite_server_timer_h_without_ack() {
        // RFC 3261 §17.2.1: no ACK within 64*T1 → timeout to the TU.
        let now = Instant::now();
        let mut tx = ServerTx::new(TxKind::Invite, false, TimerConfig::default());
        tx.send_response(404, b"404".to_vec(), now);
        assert_eq!(tx.next_deadline(), Some(now + Duration::from_secs(32)));
        assert_eq!(
            tx.poll(now + Duration::from_secs(32)),
            vec![TxAction::Timeout, TxAction::Terminated]
        );
    }

    #[test]
    fn invite_server_2xx_retransmitted_until_ack() {
        // RFC 3261 §13.3.1.4 / RFC 6026 §7.1: 2xx resent (T1..T2) until ACK; L = 64*T1.
        let now = Instant::now();
        let mut tx = ServerTx::new(TxKind::Invite, true, TimerConfig::default());
        tx.send_response(200, b"200".to_vec(), now);
        assert_eq!(tx.state(), ServerState::Accepted);
        assert_eq!(
            tx.poll(now + ms(500)),
            vec![TxAction::Send(b"200".to_vec())]
        );
        tx.on_ack(now + ms(700));
        assert!(tx.poll(now + ms(1500)).is_empty());
        assert_eq!(
            tx.poll(now + Duration::from_secs(32)),
            vec![TxAction::Terminated]
        );
        // without an ACK the TU hears of it
        let mut tx = ServerTx::new(TxKind::Invite, true, TimerConfig::default());
        tx.send_response(200, b"200".to_vec(), now);
        let acts = tx.poll(now + Duration::from_secs(32));
        assert_eq!(acts, vec![TxAction::Timeout, TxAction::Terminated]);
    }

    #[test]
    fn non_invite_server_timer_j_and_retransmissions() {
        // RFC 3261 §17.2.2: Trying absorbs retransmissions silently; Completed resends
        // the final response; J = 64*T1 for UDP, 0 for TCP.
        let now = Instant::now();
        let mut tx = ServerTx::new(TxKind::NonInvite, true, TimerConfig::default());
        assert!(tx.on_request_retransmission().is_empty());
        tx.send_response(200, b"200".to_vec(), now);
        assert_eq!(
            tx.on_request_retransmission(),
            vec![TxAction::Send(b"200".to_vec())]
        );
        assert_eq!(tx.next_deadline(), Some(now + Duration::from_secs(32)));
        let mut tcp = ServerTx::new(TxKind::NonInvite, false, TimerConfig::default());
        tcp.send_response(200, b"200".to_vec(), now);
        assert_eq!(tcp.poll(now), vec![TxAction::Terminated]);
    }
}
