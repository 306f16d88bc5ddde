//! The `:authority` shim reads every byte a Workload API client sends before h2 does:
//! HTTP/2 frames and HPACK header blocks from any local user. Any input: the shim returns
//! (never panics), stays within its bounds, and cutting the same bytes into different
//! reads does not change what the server reads or whether the connection is refused.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let whole = enclaveid_workload_api::read_through(&[bytes]);
    // The same bytes in reads of 1 to 256 bytes.
    let size = usize::from(cut) + 1;
    let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
    let cut_up = enclaveid_workload_api::read_through(&chunks);
    match (&whole, &cut_up) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the outcome depends on how reads are cut"),
        (Err(a), Err(b)) => assert_eq!(a.kind(), b.kind()),
        _ => panic!("refused one way and not the other: {whole:?} / {cut_up:?}"),
    }
});
