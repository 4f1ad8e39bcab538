//! Mailpit's search syntax, turned into SQL over the FTS5 index.
//!
//! Words and `"quoted phrases"` match anywhere (subject, addresses, message
//! ID, text body); `from:`, `to:`, `cc:`, `bcc:`, `subject:` and
//! `message-id:` narrow a term to one field; `is:read`, `is:unread` and
//! `has:attachment` filter (`is:tagged` and `tag:NAME` match nothing: no
//! message has tags); a leading `-` or `!` negates any term. Terms are
//! ANDed. Matching is by word prefix (FTS5 `unicode61` tokens), so
//! `from:example.com` matches `bob@example.com` and `subj` matches
//! `subject`, but a fragment inside a word does not match (Mailpit's
//! `LIKE '%x%'` would): the price of an index that keeps search fast at
//! 100,000 messages.
//!
//! The user's text never reaches SQL or the FTS5 grammar as such: each term
//! is split into letter/digit runs and rebuilt as a quoted FTS5 phrase.

use rusqlite::types::Value;

/// A parsed search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    terms: Vec<Term>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    /// An FTS5 expression (already safe), negated or not.
    Text { fts: String, negated: bool },
    /// A condition on the `messages` table.
    Flag { sql: &'static str, negated: bool },
    /// A term with no letter or digit: matches nothing (or, negated, all).
    Nothing { negated: bool },
}

/// Why a query was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError(pub &'static str);

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for QueryError {}

/// Longest query accepted (characters); longer ones are a 400.
pub const MAX_QUERY_CHARS: usize = 1000;

impl Query {
    /// Parses Mailpit's search syntax. An empty (or blank) query is an error.
    ///
    /// ```
    /// use smtpsrv_inbox::search::Query;
    /// assert!(Query::parse("from:jane@example.com -is:read invoice").is_ok());
    /// assert!(Query::parse("   ").is_err());
    /// ```
    pub fn parse(input: &str) -> Result<Query, QueryError> {
        if input.chars().count() > MAX_QUERY_CHARS {
            return Err(QueryError("search query too long"));
        }
        let mut terms = Vec::new();
        for word in split_words(input) {
            let (negated, word) = match word.strip_prefix(['-', '!']) {
                Some(rest) if !rest.is_empty() => (true, rest.to_owned()),
                _ => (false, word),
            };
            terms.push(term(&word, negated));
        }
        if terms.is_empty() {
            return Err(QueryError("empty search query"));
        }
        Ok(Query { terms })
    }

    /// Both this query's terms and `other`'s.
    pub fn and(mut self, other: Query) -> Query {
        self.terms.extend(other.terms);
        self
    }

    /// The whole query as one FTS5 expression, when it is made of words
    /// only (no flag such as `is:read`) and at least one is not negated:
    /// `((a) AND (b)) NOT (c)`. `None`: use [`Query::to_sql`].
    pub fn fts_only(&self) -> Option<String> {
        let mut positive: Option<String> = None;
        let mut negative = Vec::new();
        for t in &self.terms {
            match t {
                Term::Text {
                    fts,
                    negated: false,
                } => {
                    positive = Some(match positive {
                        None => format!("({fts})"),
                        Some(p) => format!("({p} AND ({fts}))"),
                    });
                }
                Term::Text { fts, negated: true } => negative.push(fts),
                // Negated "nothing" matches everything: no constraint.
                Term::Nothing { negated: true } => {}
                Term::Nothing { negated: false } | Term::Flag { .. } => return None,
            }
        }
        let mut expression = positive?;
        for n in negative {
            expression = format!("({expression} NOT ({n}))");
        }
        Some(expression)
    }

    /// A SQL condition on table `messages` and its arguments.
    pub fn to_sql(&self) -> (String, Vec<Value>) {
        let mut parts = Vec::new();
        let mut args = Vec::new();
        for t in &self.terms {
            match t {
                Term::Text { fts, negated } => {
                    let not = if *negated { "NOT " } else { "" };
                    parts.push(format!(
                        "id {not}IN (SELECT rowid FROM fts WHERE fts MATCH ?)"
                    ));
                    args.push(Value::Text(fts.clone()));
                }
                Term::Flag { sql, negated } => {
                    parts.push(if *negated {
                        format!("NOT ({sql})")
                    } else {
                        format!("({sql})")
                    });
                }
                Term::Nothing { negated } => parts.push(if *negated { "1" } else { "0" }.into()),
            }
        }
        (parts.join(" AND "), args)
    }
}

fn term(word: &str, negated: bool) -> Term {
    let lower = word.to_ascii_lowercase();
    match lower.as_str() {
        "is:read" => {
            return Term::Flag {
                sql: "read = 1",
                negated,
            };
        }
        "is:unread" => {
            return Term::Flag {
                sql: "read = 0",
                negated,
            };
        }
        "has:attachment" | "has:attachments" => {
            return Term::Flag {
                sql: "attachments > 0",
                negated,
            };
        }
        // No message has tags (tags are not implemented): Mailpit's
        // `is:tagged` and `tag:NAME` match nothing, negated everything.
        "is:tagged" => return Term::Nothing { negated },
        _ if lower.starts_with("tag:") => return Term::Nothing { negated },
        _ => {}
    }
    let fields = [
        ("from:", "from_addr"),
        ("to:", "to_addr"),
        ("cc:", "cc_addr"),
        ("bcc:", "bcc_addr"),
        ("subject:", "subject"),
        ("message-id:", "message_id"),
    ];
    for (prefix, column) in fields {
        if lower.starts_with(prefix) && word.len() > prefix.len() {
            return text(&word[prefix.len()..], Some(column), negated);
        }
    }
    text(word, None, negated)
}

fn text(value: &str, column: Option<&str>, negated: bool) -> Term {
    let tokens: Vec<&str> = value
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .collect();
    if tokens.is_empty() {
        return Term::Nothing { negated };
    }
    // Tokens hold only letters and digits: no quote can end the phrase early.
    let phrase = format!("\"{}\"*", tokens.join(" "));
    let fts = match column {
        Some(c) => format!("{c} : {phrase}"),
        None => phrase,
    };
    Term::Text { fts, negated }
}

/// Splits on whitespace, keeping `"quoted phrases"` (also after a prefix,
/// `subject:"two words"`) as one word without their quotes. An unclosed
/// quote runs to the end.
fn split_words(input: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in input.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_become_column_filters() {
        let q = Query::parse("from:bob@example.com subject:\"Your invoice\" -is:read").unwrap();
        let (sql, args) = q.to_sql();
        assert_eq!(
            sql,
            "id IN (SELECT rowid FROM fts WHERE fts MATCH ?) AND id IN (SELECT rowid FROM fts \
             WHERE fts MATCH ?) AND NOT (read = 1)"
        );
        assert_eq!(
            args,
            vec![
                Value::Text("from_addr : \"bob example com\"*".into()),
                Value::Text("subject : \"Your invoice\"*".into())
            ]
        );
    }

    #[test]
    fn words_only_become_one_fts_expression() {
        let q = Query::parse("from:bob invoice -draft").unwrap();
        assert_eq!(
            q.fts_only().unwrap(),
            "(((from_addr : \"bob\"*) AND (\"invoice\"*)) NOT (\"draft\"*))"
        );
        assert_eq!(Query::parse("invoice -is:read").unwrap().fts_only(), None);
        assert_eq!(Query::parse("-invoice").unwrap().fts_only(), None);
        assert_eq!(Query::parse("invoice @@@").unwrap().fts_only(), None);
        assert_eq!(
            Query::parse("invoice -@@@").unwrap().fts_only().unwrap(),
            "(\"invoice\"*)"
        );
    }

    #[test]
    fn tags_match_nothing_because_there_are_none() {
        assert_eq!(Query::parse("tag:urgent").unwrap().to_sql().0, "0");
        assert_eq!(Query::parse("is:tagged").unwrap().to_sql().0, "0");
        assert_eq!(
            Query::parse("invoice -tag:urgent")
                .unwrap()
                .fts_only()
                .unwrap(),
            "(\"invoice\"*)"
        );
    }

    #[test]
    fn fts_syntax_in_input_is_neutralised() {
        let q = Query::parse("\"a\" OR b* NEAR(c) col:x ^y").unwrap();
        for v in q.to_sql().1 {
            let Value::Text(t) = v else { panic!() };
            assert!(t.starts_with('"') && t.ends_with("\"*"), "{t}");
            assert_eq!(t.matches('"').count(), 2, "{t}");
        }
        assert_eq!(
            Query::parse("@@@").unwrap().to_sql().0,
            "0",
            "no word: nothing matches"
        );
        assert!(Query::parse("").is_err());
        assert!(Query::parse(&"x".repeat(MAX_QUERY_CHARS + 1)).is_err());
    }
}
