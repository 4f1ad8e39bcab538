//! Address parsing and splitting never panic and agree with each other.
#![no_main]
use libfuzzer_sys::fuzz_target;
use smtpsrv::proto::{Address, split_address};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok((local, domain)) = split_address(s) {
        assert!(!local.is_empty() && !domain.is_empty());
        assert_eq!(local.len() + 1 + domain.len(), s.len());
    }
    if let Ok(a) = Address::parse(s) {
        // A parsed address is stable when parsed again.
        assert_eq!(Address::parse(a.as_str()).as_ref(), Ok(&a));
        if let Some(d) = a.domain() {
            assert!(a.as_str().ends_with(d));
            assert!(a.as_str().starts_with(a.local_part()));
        }
    }
});
