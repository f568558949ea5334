//! Follow ids of a Twitter source as the control API receives them (the
//! changes persist through `crate::follow_delta`).

pub use crate::follow_delta::FollowDelta;

/// A user id as the control API passes it on: digits only, not zero
/// (`"+5"`, `" 5"` and `"5.0"` are mistakes worth reporting).
pub fn parse_user_id(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if n > 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(format!("invalid value: `{text}`, expected a user id: a positive integer or a string of digits")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_positive_integers() {
        assert_eq!(parse_user_id("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_user_id("7"), Ok(7));
        for bad in ["-1", "0", "12a", " 12", "+5", "5.0", "", "18446744073709551616"] {
            let e = parse_user_id(bad).unwrap_err();
            assert!(e.contains("positive integer") && e.contains(bad), "{bad}: {e}");
        }
    }
}
