//! The canned data a [`FakeUpstream`](crate::FakeUpstream) answers from: records, denials, zone
//! SOAs and per-query behaviours, all keyed by normalized name.

use std::collections::HashMap;

use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::behaviour::Behaviour;

/// SOA TTL and MINIMUM used for denials of names outside every configured zone. Short, so a
/// cache under test does not hold an accidental denial for long; change it with
/// `set_zone_soa(".", ..)`.
pub(crate) const DEFAULT_ROOT_SOA_TTL_SECS: u32 = 30;
/// See [`DEFAULT_ROOT_SOA_TTL_SECS`].
pub(crate) const DEFAULT_ROOT_SOA_MINIMUM_SECS: u32 = 30;

/// Normalizes a domain name the way the fake keys and logs it: ASCII lower-case, without the
/// trailing dot; the root is `"."`.
pub(crate) fn normalize_name(name: &str) -> String {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() { ".".to_owned() } else { trimmed.to_ascii_lowercase() }
}

/// Parses a name given by a test (trailing dot optional) into a fully qualified [`Name`].
///
/// # Panics
///
/// If the name is not a valid domain name: the test's setup is wrong and cannot go on.
pub(crate) fn parse_name(name: &str) -> Name {
    let fqdn = if name.ends_with('.') { name.to_owned() } else { format!("{name}.") };
    Name::from_ascii(&fqdn).unwrap_or_else(|error| panic!("invalid domain name {name:?}: {error}"))
}

/// Whether `name` is `zone` or lies below it (both normalized).
fn is_in_zone(name: &str, zone: &str) -> bool {
    zone == "." || name == zone || name.strip_suffix(zone).is_some_and(|rest| rest.ends_with('.'))
}

/// The TTL of an SOA record in a denial and its MINIMUM field; RFC 2308 §5 makes a cache keep the
/// denial for the smaller of the two, which is exactly what tests want to vary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SoaTimers {
    /// TTL of the SOA record itself.
    pub(crate) ttl: u32,
    /// The SOA MINIMUM field.
    pub(crate) minimum: u32,
}

/// What is stored for one `(name, type)`.
#[derive(Clone, Debug)]
enum CannedAnswer {
    /// NOERROR with this answer section.
    Records(Vec<Record>),
    /// NOERROR with no answer and this zone SOA in authority.
    NoData(SoaTimers),
}

/// What the canned data says about one question, before any [`Behaviour`] is applied.
#[derive(Clone, Debug)]
pub(crate) enum Resolution {
    /// NOERROR with this answer section.
    Records(Vec<Record>),
    /// NOERROR, empty answer, this SOA in authority.
    NoData(Record),
    /// NXDOMAIN, this SOA in authority.
    NxDomain(Record),
}

/// Everything a test has told the fake upstream about names and behaviours.
#[derive(Debug)]
pub(crate) struct Script {
    /// Canned answers per (normalized name, type).
    answers: HashMap<(String, RecordType), CannedAnswer>,
    /// Names that do not exist, with the SOA timers to deny them with.
    nxdomains: HashMap<String, SoaTimers>,
    /// Zones set with `set_zone_soa`, by normalized apex; always holds the root.
    zones: HashMap<String, SoaTimers>,
    /// Per-(name, type) behaviours; they replace the default for that question.
    behaviours: HashMap<(String, RecordType), Behaviour>,
    /// Behaviour for every question without its own.
    default_behaviour: Behaviour,
}

impl Default for Script {
    fn default() -> Self {
        let root = SoaTimers { ttl: DEFAULT_ROOT_SOA_TTL_SECS, minimum: DEFAULT_ROOT_SOA_MINIMUM_SECS };
        Self {
            answers: HashMap::new(),
            nxdomains: HashMap::new(),
            zones: HashMap::from([(".".to_owned(), root)]),
            behaviours: HashMap::new(),
            default_behaviour: Behaviour::Answer,
        }
    }
}

impl Script {
    /// Stores an answer section for `(name, rtype)`; the name now exists, so an earlier
    /// `nxdomain` for it is forgotten.
    pub(crate) fn set_records(&mut self, name: &str, rtype: RecordType, records: Vec<Record>) {
        let name = normalize_name(name);
        self.nxdomains.remove(&name);
        self.answers.insert((name, rtype), CannedAnswer::Records(records));
    }

    /// Makes `(name, rtype)` answer NODATA; the name now exists, so an earlier `nxdomain` for it
    /// is forgotten.
    pub(crate) fn set_nodata(&mut self, name: &str, rtype: RecordType, timers: SoaTimers) {
        let name = normalize_name(name);
        self.nxdomains.remove(&name);
        self.answers.insert((name, rtype), CannedAnswer::NoData(timers));
    }

    /// Makes `name` not exist for every type, forgetting any answers stored for it.
    pub(crate) fn set_nxdomain(&mut self, name: &str, timers: SoaTimers) {
        let name = normalize_name(name);
        self.answers.retain(|(stored, _), _| *stored != name);
        self.nxdomains.insert(name, timers);
    }

    /// Sets the SOA timers, and makes `zone` the apex, for denials of names under it.
    pub(crate) fn set_zone(&mut self, zone: &str, timers: SoaTimers) {
        self.zones.insert(normalize_name(zone), timers);
    }

    /// Sets the behaviour of one question.
    pub(crate) fn set_behaviour(&mut self, name: &str, rtype: RecordType, behaviour: Behaviour) {
        self.behaviours.insert((normalize_name(name), rtype), behaviour);
    }

    /// Sets the behaviour of every question without its own.
    pub(crate) fn set_default_behaviour(&mut self, behaviour: Behaviour) {
        self.default_behaviour = behaviour;
    }

    /// The behaviour for a question (`name` normalized).
    pub(crate) fn behaviour_for(&self, name: &str, rtype: RecordType) -> &Behaviour {
        self.behaviours.get(&(name.to_owned(), rtype)).unwrap_or(&self.default_behaviour)
    }

    /// What the canned data answers for a question (`name` normalized).
    pub(crate) fn resolve(&self, name: &str, rtype: RecordType) -> Resolution {
        if let Some(answer) = self.answers.get(&(name.to_owned(), rtype)) {
            return match answer {
                CannedAnswer::Records(records) => Resolution::Records(records.clone()),
                CannedAnswer::NoData(timers) => Resolution::NoData(soa_record(&self.denial_zone(name), *timers)),
            };
        }
        if let Some(timers) = self.nxdomains.get(name) {
            return Resolution::NxDomain(soa_record(&self.denial_zone(name), *timers));
        }
        let (zone, timers) = self.enclosing_zone(name);
        let soa = soa_record(zone, timers);
        if self.name_exists(name) { Resolution::NoData(soa) } else { Resolution::NxDomain(soa) }
    }

    /// Whether `name` owns data, or is an empty non-terminal above a name that does: RFC 8020
    /// lets a cache deny a whole subtree on NXDOMAIN, so the fake must answer NODATA for
    /// `svc.cluster.local` when `a.ns.svc.cluster.local` exists, as a real server does.
    fn name_exists(&self, name: &str) -> bool {
        self.answers.keys().any(|(stored, _)| stored != "." && is_in_zone(stored, name))
    }

    /// The deepest configured zone containing `name`, falling back to the root.
    fn enclosing_zone(&self, name: &str) -> (&str, SoaTimers) {
        self.zones
            .iter()
            .filter(|(zone, _)| is_in_zone(name, zone))
            .max_by_key(|(zone, _)| label_count(zone))
            .map(|(zone, timers)| (zone.as_str(), *timers))
            .unwrap_or((".", self.zones[&".".to_owned()]))
    }

    /// The zone whose SOA goes with an explicit `nxdomain`/`nodata`: the deepest configured zone
    /// other than the root, otherwise the last two labels of the name (`cluster.local` for
    /// `a.ns.svc.cluster.local`), the usual apex depth of test zones.
    fn denial_zone(&self, name: &str) -> String {
        let configured = self
            .zones
            .keys()
            .filter(|zone| *zone != "." && is_in_zone(name, zone))
            .max_by_key(|zone| label_count(zone));
        match configured {
            Some(zone) => zone.clone(),
            None => last_labels(name, 2).to_owned(),
        }
    }
}

/// Number of labels in a normalized name (the root has none).
fn label_count(name: &str) -> usize {
    if name == "." { 0 } else { name.split('.').count() }
}

/// The last `count` labels of a normalized name, or all of it if it has fewer.
fn last_labels(name: &str, count: usize) -> &str {
    if name == "." {
        return name;
    }
    match name.rmatch_indices('.').nth(count - 1) {
        Some((dot, _)) => &name[dot + 1..],
        None => name,
    }
}

/// Builds the SOA record of `zone` (normalized) carried in a denial's authority section.
pub(crate) fn soa_record(zone: &str, timers: SoaTimers) -> Record {
    let (apex, mname, rname) = if zone == "." {
        (Name::root(), parse_name("a.root-servers.net"), parse_name("nstld.verisign-grs.com"))
    } else {
        (parse_name(zone), parse_name(&format!("ns.dns.{zone}")), parse_name(&format!("hostmaster.{zone}")))
    };
    // Serial and refresh timers are irrelevant to a resolver; the values are CoreDNS's.
    let soa = SOA::new(mname, rname, 1, 7200, 1800, 86400, timers.minimum);
    Record::from_rdata(apex, timers.ttl, RData::SOA(soa))
}

/// Builds records of one type from their presentation-format data (`"10.0.0.1"`,
/// `"10 mail.example.com."`).
///
/// # Panics
///
/// If a datum does not parse as `rtype`: the test's setup is wrong and cannot go on.
pub(crate) fn records_from_text(name: &str, rtype: RecordType, data: &[&str], ttl: u32) -> Vec<Record> {
    let owner = parse_name(name);
    data.iter()
        .map(|datum| {
            let rdata = RData::try_from_str(rtype, datum)
                .unwrap_or_else(|error| panic!("invalid {rtype} data {datum:?} for {name}: {error}"));
            Record::from_rdata(owner.clone(), ttl, rdata)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timers(ttl: u32, minimum: u32) -> SoaTimers {
        SoaTimers { ttl, minimum }
    }

    fn soa_of(resolution: Resolution) -> (String, u32, u32) {
        let record = match resolution {
            Resolution::NoData(record) | Resolution::NxDomain(record) => record,
            Resolution::Records(records) => panic!("expected a denial, got {records:?}"),
        };
        let RData::SOA(soa) = &record.data else { panic!("expected an SOA, got {record:?}") };
        (record.name.to_ascii(), record.ttl, soa.minimum)
    }

    #[test]
    fn names_are_normalized() {
        assert_eq!(normalize_name("A.Example.COM."), "a.example.com");
        assert_eq!(normalize_name("a.example.com"), "a.example.com");
        assert_eq!(normalize_name("."), ".");
        assert_eq!(normalize_name(""), ".");
    }

    #[test]
    fn zone_membership_is_label_aligned() {
        assert!(is_in_zone("a.cluster.local", "cluster.local"));
        assert!(is_in_zone("cluster.local", "cluster.local"));
        assert!(!is_in_zone("acluster.local", "cluster.local"));
        assert!(is_in_zone("anything", "."));
    }

    #[test]
    fn explicit_denial_zone_is_last_two_labels_unless_configured() {
        let mut script = Script::default();
        script.set_nxdomain("x.ns.svc.cluster.local.", timers(10, 5));
        assert!(matches!(script.resolve("x.ns.svc.cluster.local", RecordType::A), Resolution::NxDomain(_)));
        assert_eq!(
            soa_of(script.resolve("x.ns.svc.cluster.local", RecordType::AAAA)),
            ("cluster.local.".to_owned(), 10, 5)
        );
        script.set_zone("svc.cluster.local", timers(99, 99));
        assert_eq!(
            soa_of(script.resolve("x.ns.svc.cluster.local", RecordType::A)),
            ("svc.cluster.local.".to_owned(), 10, 5)
        );
    }

    #[test]
    fn unknown_names_use_the_deepest_zone_or_the_root() {
        let mut script = Script::default();
        assert_eq!(
            soa_of(script.resolve("nowhere.example", RecordType::A)),
            (".".to_owned(), DEFAULT_ROOT_SOA_TTL_SECS, DEFAULT_ROOT_SOA_MINIMUM_SECS)
        );
        script.set_zone("cluster.local", timers(5, 30));
        script.set_zone("svc.cluster.local", timers(6, 31));
        assert_eq!(
            soa_of(script.resolve("a.b.svc.cluster.local", RecordType::A)),
            ("svc.cluster.local.".to_owned(), 6, 31)
        );
        assert_eq!(soa_of(script.resolve("pod.cluster.local", RecordType::A)), ("cluster.local.".to_owned(), 5, 30));
    }

    #[test]
    fn existing_names_and_empty_non_terminals_get_nodata() {
        let mut script = Script::default();
        let records = records_from_text("a.ns.svc.cluster.local", RecordType::A, &["10.0.0.1"], 30);
        script.set_records("a.ns.svc.cluster.local", RecordType::A, records);
        assert!(matches!(script.resolve("a.ns.svc.cluster.local", RecordType::AAAA), Resolution::NoData(_)));
        assert!(matches!(script.resolve("svc.cluster.local", RecordType::A), Resolution::NoData(_)));
        assert!(matches!(script.resolve("b.ns.svc.cluster.local", RecordType::A), Resolution::NxDomain(_)));
    }

    #[test]
    fn the_last_of_answer_and_nxdomain_wins() {
        let mut script = Script::default();
        let records = records_from_text("a.example", RecordType::A, &["10.0.0.1"], 30);
        script.set_records("a.example", RecordType::A, records.clone());
        script.set_nxdomain("A.example.", timers(1, 1));
        assert!(matches!(script.resolve("a.example", RecordType::A), Resolution::NxDomain(_)));
        script.set_records("a.example", RecordType::A, records);
        assert!(matches!(script.resolve("a.example", RecordType::A), Resolution::Records(_)));
    }

    #[test]
    fn last_labels_takes_from_the_right() {
        assert_eq!(last_labels("a.ns.svc.cluster.local", 2), "cluster.local");
        assert_eq!(last_labels("local", 2), "local");
        assert_eq!(last_labels("cluster.local", 2), "cluster.local");
    }

    #[test]
    #[should_panic(expected = "invalid A data")]
    fn bad_record_data_fails_loudly() {
        records_from_text("a.example", RecordType::A, &["not-an-address"], 30);
    }
}
