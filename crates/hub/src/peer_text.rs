//! Text that came from a peer, made safe to print.
//!
//! Why: an MQTT client id, a username, a certificate's names or a SAS token's `skn` reach the
//! hub before anyone is authenticated, and they end up in log lines, in the recorded refusal
//! reasons (`lastRefusal`, `iothub connections`) and on the operator's terminal. A newline there
//! forges a log line ("device connected" that never happened), and an ESC sequence rewrites the
//! terminal that shows it. Every such string goes through [`escaped`] before it is logged, stored
//! as a reason or printed as text.
//!
//! What is escaped: control characters (C0 including `\n`, `\r`, `\t` and ESC, DEL, C1), the
//! Unicode line and paragraph separators and the bidirectional overrides and isolates (which
//! reorder what a terminal shows), each as Rust's `char::escape_debug` writes it (`\n`,
//! `\u{1b}`). Everything else stays as it is: quotes, backslashes, letters of any script. The
//! result holds no character that is escaped, so escaping it again changes nothing, and a text
//! escaped when it was stored is shown unchanged when it is printed.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must not reach a log line or a terminal as it is.
fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with every control character (and line separator, bidi override) escaped; borrowed
/// when there is none, which is the common case.
pub fn escaped(text: &str) -> Cow<'_, str> {
    let Some(first) = text.find(must_escape) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str(&text[..first]);
    for c in text[first..].chars() {
        if must_escape(c) {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\0' => out.push_str("\\0"),
                _ => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::escaped;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escaped("dev\nINFO device connected"),
            "dev\\nINFO device connected"
        );
        assert_eq!(escaped("a\r\tb\0"), "a\\r\\tb\\0");
        assert_eq!(
            escaped("\u{1b}[2J\u{1b}]0;x\u{7}"),
            "\\u{1b}[2J\\u{1b}]0;x\\u{7}"
        );
        assert_eq!(escaped("del\u{7f}"), "del\\u{7f}");
        assert_eq!(escaped("c1\u{9b}31m\u{85}"), "c1\\u{9b}31m\\u{85}");
        assert_eq!(
            escaped("\u{2028}\u{2029}\u{202e}\u{2066}"),
            "\\u{2028}\\u{2029}\\u{202e}\\u{2066}"
        );
    }

    #[test]
    fn ordinary_text_is_unchanged_and_borrowed() {
        for text in [
            "",
            "sensor-1",
            "leaf CN 'x' is not the client id \"y\"",
            "back\\slash",
            "Gerät-ü-日本-😀",
            "CN=a\\,b",
        ] {
            let out = escaped(text);
            assert!(matches!(out, std::borrow::Cow::Borrowed(_)), "{text}");
            assert_eq!(out, text);
        }
    }

    #[test]
    fn escaping_is_idempotent() {
        let once = escaped("a\nb\u{1b}c\u{9b}").into_owned();
        assert_eq!(escaped(&once), once);
        assert!(!once.chars().any(char::is_control));
    }
}
