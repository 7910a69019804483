//! Cache keys: lower-cased qname, qtype (or the A/AAAA pair), qclass, DO and CD bits.

use std::hash::{BuildHasher, Hasher};

use thiserror::Error;

/// RFC 1035 §2.3.4: a name is at most 255 octets on the wire.
pub const MAX_NAME_LEN: usize = 255;
/// RFC 1035 §2.3.4: a label is at most 63 octets.
pub const MAX_LABEL_LEN: usize = 63;

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
pub const CLASS_IN: u16 = 1;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("name longer than 255 octets")]
    TooLong,
    #[error("name is not terminated by the root label")]
    Unterminated,
    #[error("compression pointer or reserved label type in a name")]
    BadLabelType,
    #[error("name contains upper-case ASCII")]
    NotLowercase,
}

/// An uncompressed wire-format name whose ASCII letters are all lower case: the only form a cache
/// key accepts, so that `Foo.Example` and `foo.example` can never be two entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LowerName<'a>(&'a [u8]);

impl<'a> LowerName<'a> {
    /// Checks `wire` is one complete, lower-cased, uncompressed name.
    pub fn new(wire: &'a [u8]) -> Result<Self, NameError> {
        if wire.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        let mut pos = 0;
        loop {
            let Some(&len) = wire.get(pos) else {
                return Err(NameError::Unterminated);
            };
            let len = len as usize;
            if len == 0 {
                return if pos + 1 == wire.len() { Ok(Self(wire)) } else { Err(NameError::Unterminated) };
            }
            // A length octet above 63 has one of the top bits set: a compression pointer or a
            // reserved label type (RFC 1035 §4.1.4, RFC 6891 §5), never a plain label.
            if len > MAX_LABEL_LEN {
                return Err(NameError::BadLabelType);
            }
            let label = wire.get(pos + 1..pos + 1 + len).ok_or(NameError::Unterminated)?;
            if label.iter().any(u8::is_ascii_uppercase) {
                return Err(NameError::NotLowercase);
            }
            pos += 1 + len;
        }
    }

    pub fn as_wire(&self) -> &'a [u8] {
        self.0
    }
}

/// Which kind of entry a key addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// A and AAAA of class IN, fetched, stored and expired together.
    Pair,
    /// Any other type, cached on its own.
    Single(u16),
}

/// Which answer of an entry a query wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Member {
    A,
    Aaaa,
    Single,
}

impl Member {
    pub(crate) fn index(self) -> usize {
        match self {
            Member::A | Member::Single => 0,
            Member::Aaaa => 1,
        }
    }
}

/// One member of an A/AAAA pair: what a pair fetch reports on as each query settles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PairMember {
    A,
    Aaaa,
}

impl PairMember {
    pub const BOTH: [PairMember; 2] = [PairMember::A, PairMember::Aaaa];

    pub fn other(self) -> PairMember {
        match self {
            PairMember::A => PairMember::Aaaa,
            PairMember::Aaaa => PairMember::A,
        }
    }

    pub fn qtype(self) -> u16 {
        match self {
            PairMember::A => TYPE_A,
            PairMember::Aaaa => TYPE_AAAA,
        }
    }

    pub fn member(self) -> Member {
        match self {
            PairMember::A => Member::A,
            PairMember::Aaaa => Member::Aaaa,
        }
    }
}

/// A borrowed cache key, built per query without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheKey<'a> {
    pub name: LowerName<'a>,
    pub kind: KeyKind,
    pub class: u16,
    /// DO and CD change what an upstream returns (RFC 4035 §3.2.1, §3.2.2), so they split the key.
    pub dnssec_ok: bool,
    pub checking_disabled: bool,
}

impl<'a> CacheKey<'a> {
    /// The key and member for a query of `qtype`/`qclass`.
    pub fn for_query(
        name: LowerName<'a>,
        qtype: u16,
        qclass: u16,
        dnssec_ok: bool,
        checking_disabled: bool,
    ) -> (Self, Member) {
        let (kind, member) = match (qtype, qclass) {
            (TYPE_A, CLASS_IN) => (KeyKind::Pair, Member::A),
            (TYPE_AAAA, CLASS_IN) => (KeyKind::Pair, Member::Aaaa),
            (t, _) => (KeyKind::Single(t), Member::Single),
        };
        let key = CacheKey { name, kind, class: qclass, dnssec_ok, checking_disabled };
        (key, member)
    }

    pub(crate) fn flags_byte(&self) -> u8 {
        (self.dnssec_ok as u8) | ((self.checking_disabled as u8) << 1)
    }

    /// The kind as stored in an entry: 0 for a pair, else 1 + qtype.
    pub(crate) fn kind_code(&self) -> u32 {
        match self.kind {
            KeyKind::Pair => 0,
            KeyKind::Single(t) => 1 + t as u32,
        }
    }

    pub(crate) fn hash_with(&self, state: &foldhash::fast::FixedState) -> u64 {
        let mut h = state.build_hasher();
        h.write(self.name.as_wire());
        h.write_u32(self.kind_code());
        h.write_u16(self.class);
        h.write_u8(self.flags_byte());
        h.finish()
    }
}

/// Lower-cases a wire name into `buf` (ASCII only, RFC 4343 §3) and validates it, returning the
/// key name. The returned name borrows `buf`, so this allocates nothing.
pub fn lowercase_into<'b>(wire: &[u8], buf: &'b mut [u8; MAX_NAME_LEN]) -> Result<LowerName<'b>, NameError> {
    if wire.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    let out = &mut buf[..wire.len()];
    for (o, i) in out.iter_mut().zip(wire) {
        *o = i.to_ascii_lowercase();
    }
    // Lower-casing a length octet is harmless: lengths are ≤ 63, below b'A' (65).
    LowerName::new(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_name_validation() {
        assert!(LowerName::new(b"\x01a\x03com\x00").is_ok());
        assert!(LowerName::new(b"\x00").is_ok());
        assert_eq!(LowerName::new(b"\x01A\x00"), Err(NameError::NotLowercase));
        assert_eq!(LowerName::new(b"\x01a"), Err(NameError::Unterminated));
        assert_eq!(LowerName::new(b"\x01a\x00\x00"), Err(NameError::Unterminated));
        assert_eq!(LowerName::new(b"\xc0\x0c"), Err(NameError::BadLabelType));
        let mut long = vec![64u8];
        long.extend([b'a'; 64]);
        long.push(0);
        assert_eq!(LowerName::new(&long), Err(NameError::BadLabelType));
        let mut too_long = Vec::new();
        for _ in 0..5 {
            too_long.push(63);
            too_long.extend([b'a'; 63]);
        }
        too_long.push(0);
        assert_eq!(LowerName::new(&too_long), Err(NameError::TooLong));
    }

    #[test]
    fn lowercase_keeps_binary_labels() {
        let mut buf = [0u8; MAX_NAME_LEN];
        let n = lowercase_into(b"\x03WwW\x02\xC3\x80\x00", &mut buf).unwrap();
        assert_eq!(n.as_wire(), b"\x03www\x02\xC3\x80\x00");
    }

    #[test]
    fn a_and_aaaa_share_a_pair_key() {
        let name = LowerName::new(b"\x01a\x00").unwrap();
        let (ka, ma) = CacheKey::for_query(name, TYPE_A, CLASS_IN, false, false);
        let (kq, mq) = CacheKey::for_query(name, TYPE_AAAA, CLASS_IN, false, false);
        assert_eq!(ka, kq);
        assert_eq!((ma, mq), (Member::A, Member::Aaaa));
        let (kt, mt) = CacheKey::for_query(name, 16, CLASS_IN, false, false);
        assert_eq!(kt.kind, KeyKind::Single(16));
        assert_eq!(mt, Member::Single);
        // A in another class is not paired.
        let (kc, _) = CacheKey::for_query(name, TYPE_A, 3, false, false);
        assert_eq!(kc.kind, KeyKind::Single(TYPE_A));
    }
}
