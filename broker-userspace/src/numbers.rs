//! Numbers as people read them.

/// `1234567` → `1,234,567`.
pub fn thousands(n: impl Into<u128>) -> String {
    let digits = n.into().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0u8), "0");
        assert_eq!(thousands(255u32), "255");
        assert_eq!(thousands(65_535u64), "65,535");
        assert_eq!(thousands(1_000_000u64), "1,000,000");
        assert_eq!(
            thousands(u128::MAX),
            "340,282,366,920,938,463,463,374,607,431,768,211,455"
        );
    }
}
