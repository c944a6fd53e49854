//! The key format: `<prefix><base62 body><base62 CRC32 checksum>`.
//!
//! The checksum lets `api_key_verify` reject typos and fabricated keys without touching a
//! table, and gives secret scanners a cheap way to confirm a leaked key (GitHub's token format
//! does the same). Everything here is pure: no Postgres, tested with plain `#[test]`s.

use rand::RngCore;

/// Base62 alphabet, digits first so that encoded numbers sort like the numbers.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A CRC32 is below 62^6, so six base62 characters always hold it.
pub const CHECKSUM_LEN: usize = 6;

/// An Argon2id key's body ends with this many secret characters (142 bits); everything before
/// them is its public lookup id, found by index without knowing the configuration.
pub const ARGON2_SECRET_LEN: usize = 24;

/// An Argon2id body keeps at least 16 characters (95 bits) of lookup id before the secret.
pub const MIN_ARGON2_BODY_LEN: usize = ARGON2_SECRET_LEN + 16;

/// Body lengths allowed by configurations: 22 base62 characters carry 130 bits of entropy.
pub const MIN_BODY_LEN: usize = 22;
pub const MAX_BODY_LEN: usize = 128;

/// Longest prefix a configuration may set; keeps keys comfortably inside a header.
pub const MAX_PREFIX_LEN: usize = 32;

/// How many leading characters of a key are kept as `start`, for display.
pub const START_LEN: usize = 6;

/// Longest key `parse` will even look at: anything longer is not ours.
pub const MAX_KEY_LEN: usize = MAX_PREFIX_LEN + MAX_BODY_LEN + CHECKSUM_LEN;

fn is_base62(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}

/// A prefix is what a scanner greps for, and where a key's body begins must be plain: empty,
/// or up to 32 ASCII letters, digits, `_` and `-` that start with a letter and end with `_`
/// or `-` (`sk_live_`, `ak-`).
pub fn prefix_problem(prefix: &str) -> Option<&'static str> {
    if prefix.is_empty() {
        return None;
    }
    if prefix.len() > MAX_PREFIX_LEN {
        return Some("must be at most 32 characters long");
    }
    if !prefix
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    {
        return Some("may contain only ASCII letters, digits, '_' and '-'");
    }
    if !prefix.as_bytes()[0].is_ascii_alphabetic() {
        return Some("must start with a letter");
    }
    if !prefix.ends_with(['_', '-']) {
        return Some("must end with '_' or '-', so that a key's prefix can be told from its body");
    }
    None
}

/// Base62 of a number, left-padded with '0' to `width`.
pub fn encode_base62(mut n: u64, width: usize) -> String {
    let mut out = vec![b'0'; width];
    let mut i = width;
    while n > 0 && i > 0 {
        i -= 1;
        out[i] = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    // SAFETY of unwrap: every byte comes from ALPHABET, which is ASCII.
    String::from_utf8(out).unwrap()
}

/// The checksum covers prefix and body, so moving a body to another prefix also fails.
pub fn checksum(prefix_and_body: &str) -> String {
    encode_base62(
        crc32fast::hash(prefix_and_body.as_bytes()) as u64,
        CHECKSUM_LEN,
    )
}

/// `len` uniformly random base62 characters from the OS generator (rejection sampling keeps
/// the distribution uniform: 256 is not a multiple of 62).
pub fn random_base62(len: usize) -> String {
    let mut rng = rand::rngs::OsRng;
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        rng.fill_bytes(&mut buf);
        for &b in buf.iter() {
            if b < 248 && out.len() < len {
                out.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    out
}

/// A freshly generated key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub key: String,
    pub start: String,
}

pub fn generate(prefix: &str, body_len: usize) -> NewKey {
    let mut key = String::with_capacity(prefix.len() + body_len + CHECKSUM_LEN);
    key.push_str(prefix);
    key.push_str(&random_base62(body_len));
    let sum = checksum(&key);
    key.push_str(&sum);
    let start = key.chars().take(prefix.len() + START_LEN).collect();
    NewKey { key, start }
}

/// A key that passed the format and checksum test.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    pub key: &'a str,
}

impl<'a> ParsedKey<'a> {
    /// The part of an Argon2id key that is looked up by index: all but the secret tail and
    /// the checksum. Knowing it does not help anyone pass verification.
    pub fn lookup_id(&self) -> &'a str {
        &self.key[..self.key.len() - CHECKSUM_LEN - ARGON2_SECRET_LEN]
    }
}

/// Splits a candidate key. The prefix is not known in advance (verification may be asked
/// without a configuration), so the body is taken to be the longest run of base62 characters
/// before the checksum; the checksum then covers the whole prefix + body text, which is what
/// matters. Returns `None` for anything that cannot be a key of ours.
pub fn parse(key: &str) -> Option<ParsedKey<'_>> {
    let bytes = key.as_bytes();
    if bytes.len() < CHECKSUM_LEN + MIN_BODY_LEN || bytes.len() > MAX_KEY_LEN {
        return None;
    }
    if !bytes
        .iter()
        .all(|&c| is_base62(c) || c == b'_' || c == b'-')
    {
        return None;
    }
    let (head, sum) = key.split_at(key.len() - CHECKSUM_LEN);
    if !sum.bytes().all(is_base62) || checksum(head) != sum {
        return None;
    }
    let body_start = head
        .bytes()
        .rposition(|c| !is_base62(c))
        .map_or(0, |i| i + 1);
    if head.len() - body_start < MIN_BODY_LEN {
        return None;
    }
    Some(ParsedKey { key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_carry_their_prefix() {
        for prefix in ["sk_live_", "", "ak-", "X_"] {
            let k = generate(prefix, 32);
            assert!(k.key.starts_with(prefix));
            assert_eq!(k.key.len(), prefix.len() + 32 + CHECKSUM_LEN);
            let p = parse(&k.key).expect("a generated key parses");
            assert_eq!(p.key, k.key);
            assert!(k.start.starts_with(prefix));
            assert_eq!(k.start.len(), prefix.len() + START_LEN);
        }
    }

    #[test]
    fn every_single_character_change_is_rejected() {
        let k = generate("sk_", 24).key;
        for i in 0..k.len() {
            let mut b = k.clone().into_bytes();
            b[i] = if b[i] == b'a' { b'b' } else { b'a' };
            let changed = String::from_utf8(b).unwrap();
            assert!(parse(&changed).is_none(), "changed at {i}: {changed}");
        }
    }

    #[test]
    fn garbage_is_rejected() {
        let long = "a".repeat(1 << 20);
        for s in [
            "",
            "sk_",
            "not a key",
            "sk_live_' OR 1=1 --",
            &long,
            "ü".repeat(40).as_str(),
        ] {
            assert!(parse(s).is_none(), "{s:.40}");
        }
    }

    #[test]
    fn the_shortest_key_parses() {
        let k = generate("", MIN_BODY_LEN).key;
        assert_eq!(k.len(), MIN_BODY_LEN + CHECKSUM_LEN);
        assert!(parse(&k).is_some());
    }

    #[test]
    fn base62_round_numbers() {
        assert_eq!(encode_base62(0, 6), "000000");
        assert_eq!(encode_base62(61, 2), "0z");
        assert_eq!(encode_base62(62, 2), "10");
        assert_eq!(encode_base62(u32::MAX as u64, 6).len(), 6);
    }

    #[test]
    fn random_body_uses_the_whole_alphabet() {
        let s = random_base62(20_000);
        for c in ALPHABET {
            assert!(s.as_bytes().contains(c));
        }
    }

    #[test]
    fn lookup_id_is_all_but_the_secret_tail() {
        let k = generate("pk_", MIN_ARGON2_BODY_LEN).key;
        let p = parse(&k).unwrap();
        assert_eq!(p.lookup_id(), &k[..3 + 16]);
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(prefix_problem("sk_live_").is_none());
        assert!(prefix_problem("ak-").is_none());
        assert!(prefix_problem("").is_none());
        assert!(prefix_problem("has space_").is_some());
        assert!(prefix_problem("quote'_").is_some());
        assert!(prefix_problem("123_").is_some());
        assert!(prefix_problem("sk").is_some());
        assert!(prefix_problem(&format!("{}_", "a".repeat(32))).is_some());
    }
}
