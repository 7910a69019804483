//! What the fake upstream does with a query, and how several such instructions combine.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::Record;

/// How [`FakeUpstream`](crate::FakeUpstream) treats a query.
///
/// Set per `(name, type)` with [`FakeUpstream::behaviour`](crate::FakeUpstream::behaviour) or for
/// every other query with
/// [`FakeUpstream::set_default_behaviour`](crate::FakeUpstream::set_default_behaviour). Combine
/// faults with [`Behaviour::All`], e.g. a slow *and* lossy endpoint:
/// `Behaviour::All(vec![Behaviour::Delay(ms(200)), Behaviour::DropFraction(0.3)])`.
///
/// Whatever the behaviour, the query is logged first, so dropped queries still show up in
/// [`FakeUpstream::log`](crate::FakeUpstream::log).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Behaviour {
    /// Answer normally from the canned data.
    #[default]
    Answer,
    /// Answer SERVFAIL with no records.
    ServFail,
    /// Answer REFUSED with no records.
    Refused,
    /// Answer NXDOMAIN (without SOA) for this question only, whatever other types of the name
    /// hold: the split answer CoreDNS autopath produced (NXDOMAIN for A, a CNAME for AAAA).
    NxDomain,
    /// Never answer.
    Drop,
    /// Answer after this delay. Other queries, including later ones pipelined on the same TCP
    /// connection, are not held up: their answers go out as soon as each is ready.
    Delay(Duration),
    /// Over UDP: TC=1 with empty answer, authority and additional sections, so the client must
    /// retry over TCP. Over TCP: the full answer.
    Truncate,
    /// Over TCP: close the connection as soon as this query arrives, without answering it or any
    /// query still pending on that connection. Over UDP: never answer.
    CloseConnection,
    /// Like `CloseConnection` for the first such query only; after that this question is
    /// answered normally (an upstream that drops one connection, e.g. a restart).
    CloseConnectionOnce,
    /// Answer with the query's ID plus one (wrapping), which a client must reject.
    WrongId,
    /// Answer with a question naming a different name (`wrong.` prepended to the asked name),
    /// which a client must reject.
    WrongQuestion,
    /// Append these unrelated records to the answer, for cache-poisoning tests: NS and SOA records
    /// go to the authority section (where an attacker would put a delegation), all others to the
    /// additional section.
    ExtraRecords(Vec<Record>),
    /// Drop this fraction of queries (0.0 to 1.0), chosen at random per query; answer the rest.
    DropFraction(f64),
    /// Apply every listed behaviour: drops combine (any one dropping drops the query), delays add
    /// up, the last of `ServFail`/`Refused` sets the rcode, and the rest each apply their change.
    All(Vec<Behaviour>),
}

impl Behaviour {
    /// Checks what cannot be checked by the type system, so that a mistake in a test's setup
    /// fails where it is made rather than inside the server thread.
    ///
    /// # Panics
    ///
    /// If a `DropFraction` is outside 0.0..=1.0 (or NaN).
    pub(crate) fn assert_valid(&self) {
        match self {
            Self::DropFraction(fraction) => assert!(
                (0.0..=1.0).contains(fraction),
                "Behaviour::DropFraction({fraction}) must be between 0.0 and 1.0"
            ),
            Self::All(behaviours) => behaviours.iter().for_each(Self::assert_valid),
            _ => {}
        }
    }

    /// Flattens this behaviour (and any nested [`Behaviour::All`]) into one plan.
    pub(crate) fn plan(&self) -> ResponsePlan {
        let mut plan = ResponsePlan::default();
        plan.add(self);
        plan
    }
}

/// Everything the server must do for one query, flattened from a [`Behaviour`].
#[derive(Debug, Default)]
pub(crate) struct ResponsePlan {
    /// Probability of not answering at all (`Drop` is 1.0).
    pub(crate) drop_probability: f64,
    /// Close the TCP connection (UDP: drop) instead of answering.
    pub(crate) close_connection: bool,
    /// The close applies once; the question's behaviour then becomes `Answer`.
    pub(crate) close_once: bool,
    /// How long to wait before sending the answer.
    pub(crate) delay: Duration,
    /// Replace the canned answer by this error rcode.
    pub(crate) error_rcode: Option<ResponseCode>,
    /// Set TC and empty the record sections when answering over UDP.
    pub(crate) truncate_udp: bool,
    /// Answer with the query ID plus one.
    pub(crate) wrong_id: bool,
    /// Answer with a question for a different name.
    pub(crate) wrong_question: bool,
    /// Unrelated records to append.
    pub(crate) extra_records: Vec<Record>,
}

impl ResponsePlan {
    fn add(&mut self, behaviour: &Behaviour) {
        match behaviour {
            Behaviour::Answer => {}
            Behaviour::ServFail => self.error_rcode = Some(ResponseCode::ServFail),
            Behaviour::Refused => self.error_rcode = Some(ResponseCode::Refused),
            Behaviour::NxDomain => self.error_rcode = Some(ResponseCode::NXDomain),
            Behaviour::Drop => self.drop_probability = 1.0,
            Behaviour::Delay(delay) => self.delay = self.delay.saturating_add(*delay),
            Behaviour::Truncate => self.truncate_udp = true,
            Behaviour::CloseConnection => self.close_connection = true,
            Behaviour::CloseConnectionOnce => {
                self.close_connection = true;
                self.close_once = true;
            }
            Behaviour::WrongId => self.wrong_id = true,
            Behaviour::WrongQuestion => self.wrong_question = true,
            Behaviour::ExtraRecords(records) => self.extra_records.extend(records.iter().cloned()),
            Behaviour::DropFraction(fraction) => {
                // Independent drops: the query survives only if every one lets it through.
                let survives = (1.0 - self.drop_probability) * (1.0 - fraction.clamp(0.0, 1.0));
                self.drop_probability = 1.0 - survives;
            }
            Behaviour::All(behaviours) => behaviours.iter().for_each(|b| self.add(b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_combines_delays_drops_and_rcode() {
        let plan = Behaviour::All(vec![
            Behaviour::Delay(Duration::from_millis(10)),
            Behaviour::DropFraction(0.5),
            Behaviour::ServFail,
            Behaviour::All(vec![
                Behaviour::Delay(Duration::from_millis(5)),
                Behaviour::DropFraction(0.5),
                Behaviour::Refused,
            ]),
        ])
        .plan();
        assert_eq!(plan.delay, Duration::from_millis(15));
        assert!((plan.drop_probability - 0.75).abs() < 1e-9);
        assert_eq!(plan.error_rcode, Some(ResponseCode::Refused));
    }

    #[test]
    #[should_panic(expected = "between 0.0 and 1.0")]
    fn drop_fraction_out_of_range_is_rejected() {
        Behaviour::All(vec![Behaviour::DropFraction(1.5)]).assert_valid();
    }
}
