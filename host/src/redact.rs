//! Text meant for people (errors, logs, `--help`): credentials redacted, untrusted strings
//! escaped and cut.
//!
//! Redis and PostgreSQL addresses carry passwords (`redis://user:pass@host`,
//! `postgres://…?password=…`, `host=… password=…`). Every message that names an address
//! passes it through [`redact`] first, so a password never reaches a log, a terminal or the
//! admin endpoint.

/// What a redacted secret is replaced with.
pub const MASK: &str = "***";

/// `text` with every password it holds replaced by [`MASK`]: the password of a URL's user
/// info (`scheme://user:PASSWORD@host`, in every URL of a comma-separated list), and the
/// value of every `password`, `pass`, `pwd`, `sslpassword`, `token` or `secret` key, whether
/// in a URL's query (`?password=…&`) or in a PostgreSQL keyword string (`password=… ` or
/// `password='…'`).
pub fn redact(text: &str) -> String {
    redact_keys(&redact_userinfo(text))
}

fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The user info ends at the last `@` before the URL ends. Not at the first `/`: an
        // unescaped `/` or `?` in a password makes the URL invalid, and the message saying so
        // must not show the rest of the password.
        let end = tail.find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',')).unwrap_or(tail.len());
        rest = match tail[..end].rfind('@') {
            Some(userinfo_end) => {
                let userinfo = &tail[..userinfo_end];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..=colon]);
                        out.push_str(MASK);
                    }
                    // A lone user name is not a secret for PostgreSQL; for Redis it may be a
                    // password (`redis://PASSWORD@host` in some clients): mask it there.
                    None if head.ends_with("redis://") || head.ends_with("rediss://") => out.push_str(MASK),
                    None => out.push_str(userinfo),
                }
                &tail[userinfo_end..]
            }
            None => tail,
        };
    }
    out.push_str(rest);
    out
}

/// Whether `key` (lowercase) names a secret.
fn secret_key(key: &str) -> bool {
    matches!(key, "password" | "pass" | "pwd" | "passwd" | "sslpassword" | "token" | "secret")
}

fn redact_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < text.len() {
        let Some(eq) = text[i..].find('=').map(|p| p + i) else { break };
        // The key: the word just before `=`.
        let key_start =
            text[..eq].rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')).map_or(0, |p| p + 1);
        let key = text[key_start..eq].trim().to_ascii_lowercase();
        out.push_str(&text[i..=eq]);
        let mut j = eq + 1;
        if secret_key(&key) {
            if bytes.get(j) == Some(&b'\'') {
                // A quoted keyword value: up to the closing quote (`\'` escapes one).
                let mut k = j + 1;
                while k < bytes.len() && bytes[k] != b'\'' {
                    k += if bytes[k] == b'\\' { 2 } else { 1 };
                }
                out.push('\'');
                out.push_str(MASK);
                out.push('\'');
                j = (k + 1).min(text.len());
            } else {
                let end = text[j..]
                    .find(|c: char| c == '&' || c == '#' || c == ',' || c == '"' || c.is_whitespace())
                    .map_or(text.len(), |p| p + j);
                out.push_str(MASK);
                j = end;
            }
        }
        i = j;
    }
    if i < text.len() {
        out.push_str(&text[i..]);
    }
    out
}

/// `text` for an error message or a log line: control characters escaped (a plugin's or a
/// producer's string must not forge log lines or reach the operator's terminal as escape
/// sequences) and cut to 200 bytes.
pub fn escape(text: &str) -> String {
    let cut = truncate(text, 200);
    let mut out: String = cut.chars().flat_map(char::escape_debug).collect();
    if cut.len() < text.len() {
        out.push_str("...");
    }
    out
}

/// `text` with every control character escaped (`\n` as `\\n`, ESC as `\\u{1b}`) and nothing
/// else changed: for strings from plugins and producers in text logs and terminal output,
/// where a newline would forge a log line and an ANSI/OSC sequence would reach the operator's
/// terminal.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .flat_map(|c| -> Box<dyn Iterator<Item = char>> {
            if c.is_control() { Box::new(c.escape_default()) } else { Box::new(std::iter::once(c)) }
        })
        .collect::<String>()
        .into()
}

/// Cut `text` to at most `max` bytes on a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_query_strings_and_keyword_strings_are_masked() {
        for (text, want) in [
            ("redis://user:hunter2@db:6379/0", "redis://user:***@db:6379/0"),
            ("rediss://:hunter2@db:6380", "rediss://:***@db:6380"),
            ("redis://hunter2@db", "redis://***@db"),
            ("redis://db:6379", "redis://db:6379"),
            ("cannot reach Redis at redis://u:p%40ss@h:1: refused", "cannot reach Redis at redis://u:***@h:1: refused"),
            ("redis://a:x@n1:1,redis://b:y@n2:2", "redis://a:***@n1:1,redis://b:***@n2:2"),
            ("postgres://ferry:hunter2@pg/db?sslmode=require", "postgres://ferry:***@pg/db?sslmode=require"),
            ("postgres://ferry@pg/db", "postgres://ferry@pg/db"),
            (
                "postgres://pg/db?user=ferry&password=hunter2&sslmode=require",
                "postgres://pg/db?user=ferry&password=***&sslmode=require",
            ),
            ("redis://db/0?password=hunter2", "redis://db/0?password=***"),
            ("host=pg user=ferry password=hunter2 dbname=x", "host=pg user=ferry password=*** dbname=x"),
            ("host=pg password='hun ter\\'2' dbname=x", "host=pg password='***' dbname=x"),
            ("PASSWORD=hunter2", "PASSWORD=***"),
            ("invalid Redis URL \"redis://u:hunter2@h\"", "invalid Redis URL \"redis://u:***@h\""),
            ("no secrets = here", "no secrets = here"),
            ("invalid Redis URL redis://u:hun/ter?2@h", "invalid Redis URL redis://u:***@h"),
        ] {
            assert_eq!(redact(text), want, "{text}");
            assert!(!redact(text).contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn control_characters_are_escaped_for_people() {
        let forged = "ok\n2026-01-01T00:00:00Z ERROR forged line \x1b]0;owned\x07\x1b[2J";
        let shown = printable(forged);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(shown.contains("\\n") && shown.contains("\\u{1b}"), "{shown}");
        assert_eq!(printable("plain: ünïcode"), "plain: ünïcode");
    }
}
