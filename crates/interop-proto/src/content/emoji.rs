//! The check on a reaction's text: at most [`MAX_REACTION_BYTES`] and one user-perceived
//! character. Sans-I/O, no tables beyond the code-point ranges below.
//!
//! "One character" is a conservative subset of an extended grapheme cluster (UAX #29), the
//! shapes that emoji take (UTS #51):
//!
//! ```text
//! reaction = element *( ZWJ element )
//! element  = RI RI                                   ; a flag
//!          | [0-9#*] [FE0F] 20E3                     ; a keycap
//!          | base [FE0E | FE0F] [modifier] *mark [tag+ E007F]
//! ```
//!
//! where `base` is any code point that is none of: a control or whitespace, ZWJ, a
//! variation selector, a skin-tone modifier (U+1F3FB..=U+1F3FF), a tag, a combining mark or
//! a regional indicator on its own. Two bases side by side (`ab`, `👍👍`) are two
//! characters and are refused.

/// Longest reaction text, in bytes. A family emoji (four people joined by ZWJ) is 25 bytes
/// and a subdivision flag 28, so this leaves room.
pub const MAX_REACTION_BYTES: usize = 64;

const ZWJ: char = '\u{200D}';
const KEYCAP: char = '\u{20E3}';
const TAG_END: char = '\u{E007F}';

/// Why a reaction text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReactionFault {
    /// Longer than [`MAX_REACTION_BYTES`]; `len` is its length in bytes.
    TooLong { len: usize },
    /// Not exactly one user-perceived character (empty is fine: it removes a reaction).
    NotOneGrapheme,
}

/// Accepts `""` (a removal) or exactly one character as the module doc defines it.
pub fn check_reaction(text: &str) -> Result<(), ReactionFault> {
    if text.len() > MAX_REACTION_BYTES {
        return Err(ReactionFault::TooLong { len: text.len() });
    }
    if text.is_empty() {
        return Ok(());
    }
    let mut chars = text.chars().peekable();
    loop {
        element(&mut chars).ok_or(ReactionFault::NotOneGrapheme)?;
        match chars.next() {
            None => return Ok(()),
            Some(ZWJ) => continue,
            Some(_) => return Err(ReactionFault::NotOneGrapheme),
        }
    }
}

type Chars<'a> = core::iter::Peekable<core::str::Chars<'a>>;

/// Consumes one element; `None` if the next code points do not form one.
fn element(chars: &mut Chars<'_>) -> Option<()> {
    let first = chars.next()?;
    if is_regional_indicator(first) {
        return chars.next().filter(|&c| is_regional_indicator(c)).map(drop);
    }
    if matches!(first, '0'..='9' | '#' | '*')
        && chars
            .peek()
            .is_some_and(|&c| c == '\u{FE0F}' || c == KEYCAP)
    {
        chars.next_if_eq(&'\u{FE0F}');
        return chars.next_if_eq(&KEYCAP).map(drop);
    }
    if !is_base(first) {
        return None;
    }
    chars.next_if(|&c| c == '\u{FE0E}' || c == '\u{FE0F}');
    chars.next_if(|&c| is_modifier(c));
    while chars.next_if(|&c| is_mark(c)).is_some() {}
    if chars.next_if(|&c| is_tag_spec(c)).is_some() {
        while chars.next_if(|&c| is_tag_spec(c)).is_some() {}
        chars.next_if_eq(&TAG_END)?;
    }
    Some(())
}

fn is_regional_indicator(c: char) -> bool {
    ('\u{1F1E6}'..='\u{1F1FF}').contains(&c)
}

fn is_modifier(c: char) -> bool {
    ('\u{1F3FB}'..='\u{1F3FF}').contains(&c)
}

fn is_tag_spec(c: char) -> bool {
    ('\u{E0020}'..='\u{E007E}').contains(&c)
}

fn is_mark(c: char) -> bool {
    matches!(c,
        '\u{0300}'..='\u{036F}'
        | '\u{1AB0}'..='\u{1AFF}'
        | '\u{1DC0}'..='\u{1DFF}'
        | '\u{20D0}'..='\u{20FF}'
        | '\u{FE20}'..='\u{FE2F}')
}

fn is_base(c: char) -> bool {
    !(c.is_control()
        || c.is_whitespace()
        || c == ZWJ
        || ('\u{FE00}'..='\u{FE0F}').contains(&c)
        || ('\u{E0000}'..='\u{E007F}').contains(&c)
        || is_modifier(c)
        || is_mark(c)
        || is_regional_indicator(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn single_emoji_of_every_shape_are_accepted() {
        for ok in [
            "",
            "👍",
            "❤️",
            "👍🏽",
            "👨‍👩‍👧‍👦",
            "🇩🇪",
            "1️⃣",
            "#⃣",
            "🏴󠁧󠁢󠁳󠁣󠁴󠁿",
            "🧑🏿‍🚀",
            "a",
            "é",
            "e\u{301}",
        ] {
            assert_eq!(check_reaction(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn two_characters_or_stray_joiners_are_refused() {
        for bad in [
            "👍👍",
            "ab",
            "🇩",
            "🇩🇪🇫",
            "👍\u{200D}",
            "\u{200D}👍",
            "\u{FE0F}",
            "\u{1F3FD}",
            " ",
            "👍 ",
            "\n",
            "🏴\u{E0067}",
            "1\u{FE0F}",
        ] {
            assert_eq!(
                check_reaction(bad),
                Err(ReactionFault::NotOneGrapheme),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_reaction_over_the_bound_is_too_long_before_anything_else() {
        let long = "👨‍👩‍👧‍👦\u{200D}".repeat(3) + "👍";
        assert!(long.len() > MAX_REACTION_BYTES);
        assert_eq!(
            check_reaction(&long),
            Err(ReactionFault::TooLong { len: long.len() })
        );
    }

    fn base() -> impl Strategy<Value = char> {
        any::<char>().prop_filter("a base", |&c| {
            is_base(c) && !matches!(c, '0'..='9' | '#' | '*')
        })
    }

    proptest! {
        #[test]
        fn checking_never_panics(text in any::<String>()) {
            let _ = check_reaction(&text);
        }

        #[test]
        fn one_base_with_a_modifier_is_one_and_two_bases_are_two(a in base(), b in base(), skin in 0x1F3FBu32..=0x1F3FF) {
            let skin = char::from_u32(skin).unwrap_or('\u{1F3FB}');
            prop_assert_eq!(check_reaction(&format!("{a}{skin}")), Ok(()));
            prop_assert_eq!(check_reaction(&format!("{a}{ZWJ}{b}")), Ok(()));
            prop_assert_eq!(check_reaction(&format!("{a}{b}")), Err(ReactionFault::NotOneGrapheme));
        }
    }
}
