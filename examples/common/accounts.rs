//! `--user NAME:PASSWORD` accounts and the AUTH PLAIN/LOGIN authenticator
//! that checks them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;

use smtpsrv::{Authenticate, Identity};
use tower::util::ServiceFn;

/// One account from the command line.
#[derive(Clone)]
pub struct User {
    name: String,
    password: String,
}

impl std::fmt::Debug for User {
    // Never print the password (clap's errors and `{:?}` would).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "User({})", self.name)
    }
}

/// A clap value parser for `NAME:PASSWORD` (the password may contain `:`).
pub fn parse_user(s: &str) -> Result<User, String> {
    match s.split_once(':') {
        Some((name, password)) if !name.is_empty() => Ok(User {
            name: name.into(),
            password: password.into(),
        }),
        _ => Err("expected NAME:PASSWORD".into()),
    }
}

/// The authenticator for [`Builder::authenticator`](smtpsrv::Builder::authenticator):
/// the user name becomes the identity when the password matches.
pub fn authenticator(
    users: &[User],
) -> ServiceFn<
    impl FnMut(Authenticate) -> Ready<Result<Option<Identity>, Infallible>> + Clone + Send + 'static,
> {
    let accounts: Arc<HashMap<String, String>> = Arc::new(
        users
            .iter()
            .map(|u| (u.name.clone(), u.password.clone()))
            .collect(),
    );
    tower::service_fn(move |req: Authenticate| {
        let known = accounts
            .get(req.username())
            .is_some_and(|password| same_secret(password.as_bytes(), req.password().as_bytes()));
        ready(Ok(known.then(|| Identity::new(req.username()))))
    })
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell how much of a guessed password was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
