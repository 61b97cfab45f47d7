//! The control API's request decoding: a raw HTTP/1.1 request as a client
//! would write it on the socket, parsed the way hyper does, then the JSON
//! body decoded and validated as `PUT /v1/backend` does. Nothing may panic,
//! and whatever is accepted must be a usable backend address and duration.
#![no_main]

use handoff_shared::{parse_backend_addr, parse_duration, SetBackend};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let body = match req.parse(data) {
        Ok(httparse::Status::Complete(n)) => &data[n..],
        // Not a request head: the body decoder still must cope with anything.
        _ => data,
    };
    let Ok(set) = serde_json::from_slice::<SetBackend>(body) else { return };
    if let Ok((host, port)) = parse_backend_addr(&set.addr) {
        assert!(port != 0 && !host.is_empty(), "{:?} accepted as {host:?}:{port}", set.addr);
    }
    if let Some(t) = &set.drain_timeout {
        let _ = parse_duration(t);
    }
    // What the proxy accepted, the client side can send back unchanged.
    let again: SetBackend = serde_json::from_slice(&serde_json::to_vec(&set).unwrap()).unwrap();
    assert_eq!(again, set);
});
