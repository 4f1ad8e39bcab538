//! PROXY headers: never panic, never claim more bytes than given, and a
//! byte-by-byte feed agrees with a single one.
#![no_main]
use libfuzzer_sys::fuzz_target;
use smtpsrv::proxy::parse_header;

fuzz_target!(|data: &[u8]| {
    let whole = parse_header(data);
    if let Ok(Some((_, used))) = &whole {
        assert!(*used <= data.len());
        // Every strict prefix needs more bytes or is already an error.
        for end in 0..*used {
            assert!(!matches!(parse_header(&data[..end]), Ok(Some(_))));
        }
    }
});
