//! MAIL and RCPT parameters: arbitrary parameter text after a valid path.
#![no_main]
use libfuzzer_sys::fuzz_target;
use smtpsrv::proto::{Command, decode_xtext};

fuzz_target!(|data: &[u8]| {
    for prefix in [&b"MAIL FROM:<a@example.com> "[..], b"RCPT TO:<b@example.com> "] {
        let mut line = prefix.to_vec();
        line.extend_from_slice(data);
        match Command::parse(&line) {
            Ok(Command::Mail { params, .. }) => {
                if let Some(envid) = &params.envid {
                    assert!(envid.chars().count() <= 100);
                    assert!(envid.bytes().all(|b| (b' '..=b'~').contains(&b)), "{envid:?}");
                }
                if let Some(auth) = &params.auth {
                    assert!(!auth.chars().any(char::is_control), "{auth:?}");
                }
            }
            Ok(Command::Rcpt { params, .. }) => {
                if let Some(orcpt) = &params.orcpt {
                    assert!(!orcpt.address.chars().any(char::is_control), "{orcpt:?}");
                }
            }
            Ok(other) => panic!("parsed as {other:?}"),
            Err(e) => assert!(e.reply().code() >= 500),
        }
    }
    if let Ok(s) = std::str::from_utf8(data)
        && let Some(decoded) = decode_xtext(s)
    {
        assert!(!decoded.chars().any(char::is_control), "{decoded:?}");
    }
});
