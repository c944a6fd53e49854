//! Tags of a verification (`api_key_verify(…, tags => ARRAY['GET /v1/files'])`): a small set
//! of labels counted with the outcome in the usage analytics.
//!
//! A tag set is normalised (sorted, duplicates removed) so that `{a,b}` and `{b,a}` count
//! together, and bounded so that counting stays in fixed memory: at most `MAX_TAGS` tags of
//! 1 to `MAX_TAG_BYTES` bytes each, without control characters. Stored joined by `SEPARATOR`
//! (a control character, so it can never occur inside a tag).

/// Most tags on one verification.
pub const MAX_TAGS: usize = 8;
/// Longest tag, in bytes of UTF-8.
pub const MAX_TAG_BYTES: usize = 64;
/// Joins the tags of a set (ASCII unit separator).
pub const SEPARATOR: char = '\u{1f}';
/// Longest joined tag set, in bytes.
pub const MAX_JOINED_BYTES: usize = MAX_TAGS * (MAX_TAG_BYTES + 1);
/// The tag set that a tag set is counted as when shared memory has no room for it; reserved.
pub const OTHER: &str = "(other)";

/// Characters that are invisible or reorder text (Unicode format characters): a tag with one
/// looks like another tag.
fn invisible(c: char) -> bool {
    matches!(c, '\u{00ad}' | '\u{061c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
}

/// A normalised tag set, joined by `SEPARATOR`; empty for no tags.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TagSet(String);

impl TagSet {
    /// Checks and normalises `tags`; a message naming the problem when they break a bound.
    /// `None` elements (SQL NULLs) are refused like empty tags.
    pub fn parse<'a>(tags: impl IntoIterator<Item = Option<&'a str>>) -> Result<TagSet, String> {
        let mut set: Vec<&str> = Vec::new();
        for (i, tag) in tags.into_iter().enumerate() {
            let position = i + 1;
            let tag = tag.ok_or_else(|| format!("tag {position} is NULL"))?;
            if tag.is_empty() {
                return Err(format!("tag {position} is empty"));
            }
            if tag.len() > MAX_TAG_BYTES {
                return Err(format!(
                    "tag {position} is longer than {MAX_TAG_BYTES} bytes"
                ));
            }
            if tag.chars().any(char::is_control) {
                return Err(format!("tag {position} contains a control character"));
            }
            if tag.chars().any(invisible) {
                return Err(format!("tag {position} contains an invisible character"));
            }
            if tag.trim() != tag {
                return Err(format!("tag {position} starts or ends with white space"));
            }
            if tag == OTHER {
                return Err(format!("tag {position} is reserved: {OTHER} stands for tag sets that were not counted apart"));
            }
            set.push(tag);
        }
        set.sort_unstable();
        set.dedup();
        if set.len() > MAX_TAGS {
            return Err(format!(
                "at most {MAX_TAGS} distinct tags are counted, got {}",
                set.len()
            ));
        }
        Ok(TagSet(set.join(&SEPARATOR.to_string())))
    }

    /// The tag set a tag set is counted as when there is no room for it.
    pub fn other() -> TagSet {
        TagSet(OTHER.to_string())
    }

    /// A tag set read back from its joined form (shared memory); `None` if it is not one.
    pub fn from_joined(joined: &str) -> Option<TagSet> {
        let parsed = TagSet::parse(
            joined
                .split(SEPARATOR)
                .filter(|_| !joined.is_empty())
                .map(Some),
        )
        .ok()?;
        (parsed.0 == joined).then_some(parsed)
    }

    pub fn joined(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(tags: &[&str]) -> Result<TagSet, String> {
        TagSet::parse(tags.iter().map(|t| Some(*t)))
    }

    #[test]
    fn order_and_duplicates_do_not_matter() {
        assert_eq!(parse(&["b", "a", "b"]), parse(&["a", "b"]));
        assert_eq!(parse(&[]).unwrap().joined(), "");
        assert!(parse(&[]).unwrap().is_empty());
    }

    #[test]
    fn bounds_are_named() {
        assert_eq!(parse(&["a", ""]).unwrap_err(), "tag 2 is empty");
        assert!(parse(&[&"x".repeat(65)]).unwrap_err().contains("64 bytes"));
        assert!(parse(&["a\nb"]).unwrap_err().contains("control"));
        assert!(parse(&["a\u{200b}"]).unwrap_err().contains("invisible"));
        assert!(parse(&[" "]).unwrap_err().contains("white space"));
        assert!(parse(&["(other)"]).unwrap_err().contains("reserved"));
        assert_eq!(
            TagSet::parse([Some("a"), None]).unwrap_err(),
            "tag 2 is NULL"
        );
        let nine: Vec<String> = (0..9).map(|i| i.to_string()).collect();
        let nine: Vec<&str> = nine.iter().map(String::as_str).collect();
        assert!(parse(&nine).unwrap_err().contains("at most 8"));
        // Duplicates count once.
        assert!(parse(&["a"; 20]).is_ok());
    }

    proptest! {
        #[test]
        fn a_valid_set_fits_and_reads_back(tags in proptest::collection::vec("[^\\p{Cc}]{1,16}", 0..12)) {
            let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
            if let Ok(set) = parse(&refs) {
                prop_assert!(set.joined().len() <= MAX_JOINED_BYTES);
                prop_assert_eq!(TagSet::from_joined(set.joined()), Some(set.clone()));
            }
        }

        #[test]
        fn any_input_is_checked_without_panicking(tags in proptest::collection::vec(proptest::option::of(".{0,80}"), 0..12)) {
            let _ = TagSet::parse(tags.iter().map(|t| t.as_deref()));
        }
    }
}
