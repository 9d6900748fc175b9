//! Everything a peer can put on a partita connection, decoded from arbitrary bytes: the
//! control messages of each direction (and the handshake, and the data streams' headers),
//! the length-prefixed frame splitter, a task graph, a task's op, and an encoded value (array chunks and reduction
//! partials; frame partitions are swept by tests/integration/wire.rs, as building polars
//! instrumented takes longer than a fuzzing session). Each must return an error or a value,
//! never panic, never allocate what a length field merely claims.
//!
//! ```text
//! cargo install cargo-fuzz
//! cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run wire -- -max_total_time=300
//! ```
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use partita_core::{Graph, Op, Value};
use partita_proto::messages::{
    DataOpen, DataResponse, FrameDecoder, FromClient, FromWorker, Hello, PushReply, ToClient,
    ToWorker, decode,
};

// Link the array ops and codecs so their names are registered.
use partita_array as _;

fuzz_target!(|data: &[u8]| {
    let _ = decode::<Hello>(data);
    let _ = decode::<FromClient>(data);
    let _ = decode::<ToClient>(data);
    let _ = decode::<FromWorker>(data);
    let _ = decode::<ToWorker>(data);
    let _ = decode::<DataOpen>(data);
    let _ = decode::<DataResponse>(data);
    let _ = decode::<PushReply>(data);
    let mut frames = FrameDecoder::with_limit(1 << 16);
    for piece in data.chunks(7) {
        frames.push(piece);
        while let Ok(Some(frame)) = frames.next_frame() {
            let _ = decode::<ToWorker>(&frame);
        }
    }
    let _ = Graph::decode(data);
    let _ = rmp_serde::from_slice::<Arc<dyn Op>>(data);
    let _ = Value::decode(data.to_vec());
});
