//! containerd's filter syntax (`labels."containerd.io/snapshot.ref"==X,parent=="Y"`) on
//! snapshot infos: selectors joined by `,` must all match; `List` matches any filter.

use crate::meta::Info;

/// A filter that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("filter {filter:?} at byte {at}: {reason}")]
pub struct FilterError {
    /// The filter.
    pub filter: String,
    /// Where parsing stopped.
    pub at: usize,
    /// What was expected.
    pub reason: String,
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(regex::Regex),
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

/// One parsed filter: every selector must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    selectors: Vec<Selector>,
}

impl Filter {
    /// Parses one filter; the empty filter matches everything.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let mut p = Parser { text, at: 0 };
        let mut selectors = Vec::new();
        p.skip_space();
        if p.done() {
            return Ok(Filter { selectors });
        }
        loop {
            selectors.push(p.selector()?);
            p.skip_space();
            if p.done() {
                return Ok(Filter { selectors });
            }
            p.expect(",")?;
            p.skip_space();
        }
    }

    /// Whether `info` matches every selector.
    pub fn matches(&self, info: &Info) -> bool {
        self.selectors.iter().all(|s| s.matches(info))
    }
}

impl Selector {
    /// As containerd's `selector.Match` with its snapshot adaptor: `name`, `parent` and
    /// `kind` are always present (an empty parent too), a label when it is set; `!=` and
    /// `~=` compare an absent field as the empty string.
    fn matches(&self, info: &Info) -> bool {
        let (value, present) = match self.path.split_first() {
            Some((f, [])) if f == "name" => (info.name.as_str(), true),
            Some((f, [])) if f == "parent" => (info.parent.as_str(), true),
            Some((f, [])) if f == "kind" => (info.kind.as_str(), true),
            Some((f, rest)) if f == "labels" && !rest.is_empty() => {
                match info.labels.get(&rest.join(".")) {
                    Some(v) => (v.as_str(), true),
                    None => ("", false),
                }
            }
            _ => ("", false),
        };
        match &self.op {
            Op::Present => present,
            Op::Equal(v) => present && value == v,
            Op::NotEqual(v) => value != v,
            Op::Matches(re) => re.is_match(value),
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn done(&self) -> bool {
        self.at >= self.text.len()
    }

    fn error(&self, reason: impl Into<String>) -> FilterError {
        FilterError {
            filter: self.text.to_string(),
            at: self.at,
            reason: reason.into(),
        }
    }

    fn skip_space(&mut self) {
        let trimmed = self.rest().trim_start();
        self.at = self.text.len() - trimmed.len();
    }

    fn expect(&mut self, token: &str) -> Result<(), FilterError> {
        if self.rest().starts_with(token) {
            self.at += token.len();
            Ok(())
        } else {
            Err(self.error(format!("expected {token:?}")))
        }
    }

    fn selector(&mut self) -> Result<Selector, FilterError> {
        let mut path = vec![self.field()?];
        while self.rest().starts_with('.') {
            self.at += 1;
            path.push(self.field()?);
        }
        self.skip_space();
        let op = if let Some(op) = ["==", "!=", "~="]
            .into_iter()
            .find(|o| self.rest().starts_with(o))
        {
            self.at += 2;
            self.skip_space();
            let value = self.value(op == "~=")?;
            match op {
                "==" => Op::Equal(value),
                "!=" => Op::NotEqual(value),
                _ => Op::Matches(
                    regex::Regex::new(&value)
                        .map_err(|e| self.error(format!("bad regular expression: {e}")))?,
                ),
            }
        } else {
            Op::Present
        };
        Ok(Selector { path, op })
    }

    fn field(&mut self) -> Result<String, FilterError> {
        if self.rest().starts_with(['"', '\'']) {
            return self.quoted();
        }
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(self.rest().len());
        let field = self.rest()[..len].to_string();
        if !field.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(self.error("expected a field name"));
        }
        self.at += len;
        Ok(field)
    }

    /// A value; a regular expression may also be quoted with `/` or `|`.
    fn value(&mut self, alternative_quotes: bool) -> Result<String, FilterError> {
        let alternatives: &[char] = if alternative_quotes {
            &['"', '\'', '/', '|']
        } else {
            &['"', '\'']
        };
        if self.rest().starts_with(alternatives) {
            return self.quoted();
        }
        if self.rest().starts_with(['/', '|']) {
            // containerd's scanner reads these as quotes, allowed only for `~=`.
            return Err(self.error("invalid quote encountered"));
        }
        let len = self
            .rest()
            .find(|c: char| c.is_whitespace() || c == ',')
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(self.error("expected a value"));
        }
        let value = self.rest()[..len].to_string();
        self.at += len;
        Ok(value)
    }

    /// A quoted string (its quote is the character at the cursor) with Go's escapes.
    fn quoted(&mut self) -> Result<String, FilterError> {
        let Some(quote) = self.rest().chars().next() else {
            return Err(self.error("expected a quoted string"));
        };
        let body = &self.rest()[quote.len_utf8()..];
        let mut out = String::new();
        let mut chars = body.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == quote {
                self.at += quote.len_utf8() + i + 1;
                return Ok(out);
            }
            if c == '\\' {
                let e = chars.next().map(|(_, e)| e);
                out.push(
                    escape(e, quote, &mut chars)
                        .ok_or_else(|| self.error("illegal escape sequence"))?,
                );
            } else if c == '\n' {
                break;
            } else {
                out.push(c);
            }
        }
        Err(self.error("quoted literal not terminated"))
    }
}

/// The character a backslash escape stands for: Go's single-character escapes, octal
/// (`\101`) and hexadecimal (`\x41`, `\u0041`, `\U00000041`) ones.
fn escape(
    e: Option<char>,
    quote: char,
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
) -> Option<char> {
    let mut digits = |first: Option<char>, radix: u32, n: usize| -> Option<char> {
        let mut text: String = first.into_iter().collect();
        while text.len() < n {
            text.push(chars.next()?.1);
        }
        char::from_u32(u32::from_str_radix(&text, radix).ok()?)
    };
    match e? {
        'a' => Some('\u{7}'),
        'b' => Some('\u{8}'),
        'f' => Some('\u{c}'),
        'n' => Some('\n'),
        'r' => Some('\r'),
        't' => Some('\t'),
        'v' => Some('\u{b}'),
        '\\' => Some('\\'),
        c if c == quote => Some(c),
        c @ '0'..='7' => digits(Some(c), 8, 3),
        'x' => digits(None, 16, 2),
        'u' => digits(None, 16, 4),
        'U' => digits(None, 16, 8),
        _ => None,
    }
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
