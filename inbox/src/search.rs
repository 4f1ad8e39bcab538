//! Mailpit's search syntax, turned into SQL over the FTS5 index.
//!
//! Words and `"quoted phrases"` match anywhere (subject, addresses, message
//! ID, text body); `from:`, `to:`, `cc:`, `bcc:`, `subject:` and
//! `message-id:` narrow a term to one field (the address fields through
//! their own index, where a term's words must all fall in one mailbox, see
//! [`address_tokens`]); `is:read`, `is:unread` and
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

/// The FTS5 table a term is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index {
    /// `fts`: subject, addresses, message ID and text body, as words with
    /// their positions (phrases).
    Text,
    /// `addr`: each address of `From`, `To`, `Cc` and `Bcc` as whole
    /// tokens, one per word suffix (see [`address_tokens`]).
    Address,
}

impl Index {
    /// The table's name.
    pub fn table(self) -> &'static str {
        match self {
            Index::Text => "fts",
            Index::Address => "addr",
        }
    }
}

/// A query made of words only, as FTS5 expressions: the messages matching
/// every `positive` one and none of the `negative` ones. Each table's
/// negated terms are folded into its positive expression when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Expressions whose matches are intersected (at least one).
    pub positive: Vec<(Index, String)>,
    /// Expressions whose matches are taken away.
    pub negative: Vec<(Index, String)>,
}

impl Plan {
    /// One string naming the plan (a cache key).
    pub fn key(&self) -> String {
        let mut key = String::new();
        for (sign, list) in [('+', &self.positive), ('-', &self.negative)] {
            for (index, e) in list {
                key.push(sign);
                key.push_str(index.table());
                key.push(':');
                key.push_str(e);
                key.push('\n');
            }
        }
        key
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    /// An FTS5 expression (already safe) over one table, negated or not.
    Text {
        index: Index,
        fts: String,
        negated: bool,
    },
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

    /// The query as FTS5 expressions (one or two tables), when it is made
    /// of words only (no flag such as `is:read`) and at least one is not
    /// negated: `((a) AND (b)) NOT (c)` per table. `None`: use
    /// [`Query::to_sql`].
    pub fn fts_only(&self) -> Option<Plan> {
        let mut plan = Plan {
            positive: Vec::new(),
            negative: Vec::new(),
        };
        for index in [Index::Text, Index::Address] {
            let mut positive: Option<String> = None;
            let mut negative = Vec::new();
            for t in &self.terms {
                match t {
                    Term::Text {
                        index: i,
                        fts,
                        negated: false,
                    } if *i == index => {
                        positive = Some(match positive {
                            None => format!("({fts})"),
                            Some(p) => format!("({p} AND ({fts}))"),
                        });
                    }
                    Term::Text {
                        index: i,
                        fts,
                        negated: true,
                    } if *i == index => negative.push(fts),
                    Term::Text { .. } => {}
                    // Negated "nothing" matches everything: no constraint.
                    Term::Nothing { negated: true } => {}
                    Term::Nothing { negated: false } | Term::Flag { .. } => return None,
                }
            }
            match positive {
                Some(mut expression) => {
                    for n in negative {
                        expression = format!("({expression} NOT ({n}))");
                    }
                    plan.positive.push((index, expression));
                }
                None if !negative.is_empty() => {
                    let any = negative
                        .iter()
                        .map(|n| format!("({n})"))
                        .collect::<Vec<_>>()
                        .join(" OR ");
                    plan.negative.push((index, any));
                }
                None => {}
            }
        }
        if plan.positive.is_empty() {
            return None;
        }
        Some(plan)
    }

    /// When the query is made of read/unread flags only (`is:unread`,
    /// `-is:read`...): whether it selects the read messages and whether it
    /// selects the unread ones, so that its counts are the totals'.
    pub fn read_flags_only(&self) -> Option<(bool, bool)> {
        let (mut read, mut unread) = (true, true);
        for t in &self.terms {
            match t {
                Term::Flag { sql, negated } if *sql == READ || *sql == UNREAD => {
                    // `is:read` and `-is:unread` exclude the unread.
                    if (*sql == READ) != *negated {
                        unread = false;
                    } else {
                        read = false;
                    }
                }
                Term::Nothing { negated: true } => {}
                _ => return None,
            }
        }
        Some((read, unread))
    }

    /// A SQL condition on table `messages` and its arguments.
    pub fn to_sql(&self) -> (String, Vec<Value>) {
        let mut parts = Vec::new();
        let mut args = Vec::new();
        for t in &self.terms {
            match t {
                Term::Text {
                    index,
                    fts,
                    negated,
                } => {
                    let not = if *negated { "NOT " } else { "" };
                    let table = index.table();
                    parts.push(format!(
                        "id {not}IN (SELECT rowid FROM {table} WHERE {table} MATCH ?)"
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

const READ: &str = "read = 1";
const UNREAD: &str = "read = 0";

fn term(word: &str, negated: bool) -> Term {
    let lower = word.to_ascii_lowercase();
    match lower.as_str() {
        "is:read" => {
            return Term::Flag { sql: READ, negated };
        }
        "is:unread" => {
            return Term::Flag {
                sql: UNREAD,
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
        ("from:", AddressField::From),
        ("to:", AddressField::To),
        ("cc:", AddressField::Cc),
        ("bcc:", AddressField::Bcc),
    ];
    for (prefix, field) in fields {
        if lower.starts_with(prefix) && word.len() > prefix.len() {
            return address(&word[prefix.len()..], field, negated);
        }
    }
    let fields = [("subject:", "subject"), ("message-id:", "message_id")];
    for (prefix, column) in fields {
        if lower.starts_with(prefix) && word.len() > prefix.len() {
            return text(&word[prefix.len()..], Some(column), negated);
        }
    }
    text(word, None, negated)
}

/// An address field, as its tokens in the `addr` index are tagged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressField {
    /// `From`.
    From,
    /// `To`.
    To,
    /// `Cc`.
    Cc,
    /// `Bcc` (and envelope recipients named in no header).
    Bcc,
}

impl AddressField {
    fn tag(self) -> &'static str {
        match self {
            AddressField::From => "f",
            AddressField::To => "t",
            AddressField::Cc => "c",
            AddressField::Bcc => "b",
        }
    }
}

/// Longest address token kept (bytes); longer ones are cut, at a
/// character boundary, on both the index and the query side.
const MAX_ADDRESS_TOKEN: usize = 200;

/// The `addr` index's tokens for one field's mailboxes, separated by
/// spaces (the table's tokenizer, `ascii` with `_` as a token character,
/// keeps each whole).
///
/// A mailbox is its words (letter/digit runs of the name, then of the
/// address, lower-cased, Latin diacritics removed): `Jane Doe
/// <jane@shop.example>` is `jane doe jane shop example`. It is indexed as
/// one token per word suffix, joined by `_` and tagged with the field:
/// `f_jane_doe_jane_shop_example`, `f_doe_jane_shop_example`, ...,
/// `f_example`. A search `from:jane@shop` is then the single prefix
/// `f_jane_shop*`, which matches exactly the mailboxes whose word sequence
/// has `jane`, `shop*` in a row — what the phrase prefix `"jane shop"*`
/// means in the text index — but reads one term's rowids instead of
/// merging two position lists.
pub fn address_tokens(field: AddressField, mailboxes: &[crate::store::Address]) -> String {
    let mut out = String::new();
    let mut words = Vec::new();
    for m in mailboxes {
        words.clear();
        words.extend(fold_words(&m.name));
        words.extend(fold_words(&m.address));
        for i in 0..words.len() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&address_token(field, &words[i..]));
        }
    }
    out
}

fn address_token(field: AddressField, words: &[String]) -> String {
    let mut token = String::from(field.tag());
    for w in words {
        token.push('_');
        token.push_str(w);
        if token.len() >= MAX_ADDRESS_TOKEN {
            let mut end = MAX_ADDRESS_TOKEN;
            while !token.is_char_boundary(end) {
                end -= 1;
            }
            token.truncate(end);
            break;
        }
    }
    token
}

/// Letter/digit runs of `text`, lower-cased, with the diacritics of Latin
/// letters (U+00C0..U+017F) removed, as the text index's `unicode61
/// remove_diacritics 2` does.
fn fold_words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            w.chars()
                .flat_map(char::to_lowercase)
                .map(fold_latin)
                .collect()
        })
}

/// Base letters of U+00C0..U+017F, lower case (from their canonical
/// decompositions; letters without one map to themselves).
const LATIN_FOLD: &str = "aaaaaaæceeeeiiiiðnooooo×øuuuuyþßaaaaaaæceeeeiiiiðnooooo÷øuuuuyþyaaaaaaccccccccddđđeeeeeeeeeegggggggghhħħiiiiiiiiiıĳĳjjkkĸllllllŀŀłłnnnnnnŉŋŋooooooœœrrrrrrssssssssttttŧŧuuuuuuuuuuuuwwyyyzzzzzzſ";

fn fold_latin(c: char) -> char {
    match c as u32 {
        cp @ 0xC0..0x180 => LATIN_FOLD.chars().nth((cp - 0xC0) as usize).unwrap_or(c),
        _ => c,
    }
}

fn address(value: &str, field: AddressField, negated: bool) -> Term {
    let words: Vec<String> = fold_words(value).collect();
    if words.is_empty() {
        return Term::Nothing { negated };
    }
    // Only letters, digits and `_`: no quote can end the string early.
    Term::Text {
        index: Index::Address,
        fts: format!("\"{}\"*", address_token(field, &words)),
        negated,
    }
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
    Term::Text {
        index: Index::Text,
        fts,
        negated,
    }
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
            "id IN (SELECT rowid FROM addr WHERE addr MATCH ?) AND id IN (SELECT rowid FROM fts \
             WHERE fts MATCH ?) AND NOT (read = 1)"
        );
        assert_eq!(
            args,
            vec![
                Value::Text("\"f_bob_example_com\"*".into()),
                Value::Text("subject : \"Your invoice\"*".into())
            ]
        );
    }

    /// The positive FTS expressions of a query that needs no SQL filter.
    fn positive(query: &str) -> Vec<(Index, String)> {
        Query::parse(query).unwrap().fts_only().unwrap().positive
    }

    #[test]
    fn words_only_become_one_fts_expression_per_table() {
        let q = Query::parse("from:bob invoice -draft").unwrap();
        assert_eq!(
            q.fts_only().unwrap(),
            Plan {
                positive: vec![
                    (Index::Text, "((\"invoice\"*) NOT (\"draft\"*))".into()),
                    (Index::Address, "(\"f_bob\"*)".into()),
                ],
                negative: vec![],
            }
        );
        let q = Query::parse("from:a@example.com -zz1 -to:ann -cc:joe").unwrap();
        assert_eq!(
            q.fts_only().unwrap(),
            Plan {
                positive: vec![(
                    Index::Address,
                    "(((\"f_a_example_com\"*) NOT (\"t_ann\"*)) NOT (\"c_joe\"*))".into()
                )],
                negative: vec![(Index::Text, "(\"zz1\"*)".into())],
            }
        );
        let q = Query::parse("invoice -to:ann -bcc:x").unwrap();
        assert_eq!(
            q.fts_only().unwrap().negative,
            [(Index::Address, "(\"t_ann\"*) OR (\"b_x\"*)".into())]
        );
        assert_eq!(Query::parse("invoice -is:read").unwrap().fts_only(), None);
        assert_eq!(Query::parse("-invoice").unwrap().fts_only(), None);
        assert_eq!(Query::parse("-from:ann").unwrap().fts_only(), None);
        assert_eq!(Query::parse("invoice @@@").unwrap().fts_only(), None);
        assert_eq!(
            positive("invoice -@@@"),
            [(Index::Text, "(\"invoice\"*)".into())]
        );
    }

    #[test]
    fn address_tokens_are_word_suffixes_per_mailbox() {
        let a = |name: &str, address: &str| crate::store::Address {
            name: name.into(),
            address: address.into(),
        };
        assert_eq!(
            address_tokens(
                AddressField::To,
                &[a("José Doe", "jd@Shop.example"), a("", "x@y")]
            ),
            "t_jose_doe_jd_shop_example t_doe_jd_shop_example t_jd_shop_example \
             t_shop_example t_example t_x_y t_y"
        );
        assert_eq!(address_tokens(AddressField::From, &[a("", "")]), "");
        // The query side folds the same way: one prefix token.
        let q = Query::parse("from:\"JOSÉ doe\"").unwrap();
        assert_eq!(
            q.fts_only().unwrap().positive,
            [(Index::Address, "(\"f_jose_doe\"*)".into())]
        );
        // Very long word runs are cut to the same length on both sides.
        let long = "w ".repeat(300);
        let tokens = address_tokens(AddressField::Cc, &[a(&long, "")]);
        let first = tokens.split(' ').next().unwrap();
        assert!(first.len() <= MAX_ADDRESS_TOKEN);
        let q = Query::parse(&format!("cc:\"{long}\"")).unwrap();
        assert_eq!(
            q.fts_only().unwrap().positive,
            [(Index::Address, format!("(\"{first}\"*)"))]
        );
    }

    #[test]
    fn read_flags_alone_are_recognised() {
        let f = |q: &str| Query::parse(q).unwrap().read_flags_only();
        assert_eq!(f("is:unread"), Some((false, true)));
        assert_eq!(f("-is:unread"), Some((true, false)));
        assert_eq!(f("is:read"), Some((true, false)));
        assert_eq!(f("-is:read -tag:x"), Some((false, true)));
        assert_eq!(f("is:read is:unread"), Some((false, false)));
        assert_eq!(f("is:unread invoice"), None);
        assert_eq!(f("is:unread has:attachment"), None);
        assert_eq!(f("is:unread tag:x"), None);
    }

    #[test]
    fn tags_match_nothing_because_there_are_none() {
        assert_eq!(Query::parse("tag:urgent").unwrap().to_sql().0, "0");
        assert_eq!(Query::parse("is:tagged").unwrap().to_sql().0, "0");
        assert_eq!(
            positive("invoice -tag:urgent"),
            [(Index::Text, "(\"invoice\"*)".into())]
        );
    }

    #[test]
    fn fts_syntax_in_input_is_neutralised() {
        let q = Query::parse("\"a\" OR b* NEAR(c) col:x ^y from:\"x\" to:'y cc:z*").unwrap();
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
