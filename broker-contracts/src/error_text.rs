//! Errors as one line of text, for logs and the CLI: each cause once, cut to
//! a sane length (node messages can be kilobytes).

/// Longest reason kept, in characters.
pub const MAX_REASON: usize = 300;

/// An error and its sources on one line ("error sending request …: tcp
/// connect error: Connection refused"), each cause once.
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = one_line(&err.to_string());
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    one_line(&parts.join(": "))
}

/// The first line of `s`, cut to [`MAX_REASON`] characters.
pub fn one_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default().trim();
    match line.char_indices().nth(MAX_REASON) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_cuts_and_describe_keeps_each_cause_once() {
        let line = one_line(&format!("first {}\nsecond", "x".repeat(1000)));
        assert_eq!(line.chars().count(), MAX_REASON + 1);
        assert!(line.ends_with('…'));
        let io = std::io::Error::other("inner");
        assert_eq!(describe(&io), "inner");
    }
}
