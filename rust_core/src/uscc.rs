//! Unified social credit code (统一社会信用代码, GB 32100-2015): 18 characters whose last one is
//! a check character over the first 17, weighted 3^i mod 31 in a 31-character alphabet.

/// The code alphabet: digits and capital letters without I, O, Z, S, V.
const ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

fn value(c: u8) -> Option<u32> {
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u32)
}

/// The check character for the first 17 characters, or None if they are not 17 code characters.
pub fn check_char(first17: &str) -> Option<char> {
    let bytes = first17.as_bytes();
    if bytes.len() != 17 {
        return None;
    }
    let mut sum = 0u32;
    for (&c, w) in bytes.iter().zip(WEIGHTS) {
        sum += value(c)? * w;
    }
    let check = (31 - sum % 31) % 31;
    Some(char::from(ALPHABET[check as usize]))
}

pub fn is_valid(code: &str) -> bool {
    code.len() == 18
        && code.is_ascii()
        && check_char(&code[..17]).is_some_and(|c| code.as_bytes()[17] == c as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_codes() {
        // A code widely cited as a worked example of the check character.
        assert!(is_valid("91350100M000100Y43"));
        assert_eq!(check_char("91350100M000100Y4"), Some('3'));
    }

    #[test]
    fn refusals() {
        assert!(!is_valid("91350100M000100Y44"));
        assert!(!is_valid("91350100M000100Y4"));
        assert!(!is_valid("91350100I000100Y43"));
        assert!(!is_valid("91350100m000100Y43"));
        assert!(!is_valid("9135010０M000100Y43"));
        assert_eq!(check_char("short"), None);
    }
}
