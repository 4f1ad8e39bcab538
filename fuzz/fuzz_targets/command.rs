//! Any line parses to a command or to an error whose reply is well formed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use smtpsrv::proto::Command;

fuzz_target!(|line: &[u8]| {
    match Command::parse(line) {
        Ok(cmd) => assert!(!cmd.verb().is_empty()),
        Err(e) => {
            let r = e.reply();
            assert!((500..=599).contains(&r.code()), "{r}");
            let wire = r.to_string();
            assert!(wire.ends_with("\r\n") && wire.len() <= 512);
        }
    }
});
