//! The distributed scheduler's state machine alone: no sockets, no workers, no Python.
//!
//! `cargo bench -p partita-proto --bench scheduler_state` times what the `partita
//! scheduler` process does for the task-throughput workload of the comparison suite (10,000
//! delayed calls reduced 100 at a time, as `pt.delayed` names them: `inc-17`, `total-3`):
//! decode the client's `SubmitGraph`, then finish every task as two one-thread workers
//! would report it (each report encoded and decoded, so its key arrives as a fresh name, as
//! from a socket), encoding each message the scheduler sends. Throughput is tasks per
//! second of scheduler time, an upper bound on the cluster's.

use std::collections::VecDeque;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use partita_core::Key;
use partita_proto::Time;
use partita_proto::messages::{
    self, ClientId, FromClient, FromWorker, Resources, ToClient, ToWorker, WorkerId,
};
use partita_proto::scheduler::{SchedulerAction, SchedulerConfig, SchedulerEvent, SchedulerState};
use partita_proto::sim::{order_depth_first, spec};
use serde_bytes::ByteBuf;

const LEAVES: u32 = 10_000;
const FAN_IN: usize = 100;
/// About what cloudpickle makes of `(inc, (17,), {})` with `inc` importable.
const PAYLOAD: usize = 80;

/// The encoded `SubmitGraph` and the key the client wants.
fn submission() -> (Vec<u8>, Key, usize) {
    let mut tasks = Vec::new();
    let mut level: Vec<Key> = (0..LEAVES)
        .map(|i| Key::named(format!("inc-{i}")))
        .collect();
    for k in &level {
        tasks.push(spec(k.clone(), vec![]));
    }
    let mut n = 0;
    while level.len() > 1 {
        level = level
            .chunks(FAN_IN)
            .map(|deps| {
                let k = Key::named(format!("total-{n}"));
                n += 1;
                tasks.push(spec(k.clone(), deps.to_vec()));
                k
            })
            .collect();
    }
    let root = level.pop().expect("one root");
    order_depth_first(&mut tasks, std::slice::from_ref(&root));
    for t in &mut tasks {
        t.payload = ByteBuf::from(vec![7u8; PAYLOAD]);
    }
    let count = tasks.len();
    let msg = FromClient::SubmitGraph {
        tasks,
        wanted: vec![root.clone()],
    };
    (messages::encode(&msg).expect("encodes"), root, count)
}

/// Decode, submit, and finish every task in the order two one-thread workers would; returns
/// the bytes of messages sent (so nothing is optimized away).
#[inline(never)]
fn run(bytes: &[u8], root: &Key) -> usize {
    let mut s = SchedulerState::new(SchedulerConfig::default());
    for w in 0..2 {
        let e = SchedulerEvent::WorkerJoined {
            worker: WorkerId(w),
            nthreads: 1,
            memory_limit: 0,
            address: format!("127.0.0.1:{}", 4000 + w),
            nanny: None,
            resources: Resources::default(),
        };
        s.handle(e, Time::ZERO);
    }
    s.handle(
        SchedulerEvent::ClientConnected {
            client: ClientId(0),
        },
        Time::ZERO,
    );
    let msg: FromClient = messages::decode(bytes).expect("decodes");
    let mut queues: [VecDeque<Key>; 2] = [VecDeque::new(), VecDeque::new()];
    let mut sent = 0;
    let mut done = false;
    // Like the runtime's outboxes: what one pass says goes into one buffer, framed in place.
    let mut out = Vec::new();
    let mut take = |actions: Vec<SchedulerAction>, queues: &mut [VecDeque<Key>; 2]| {
        for a in actions {
            match a {
                SchedulerAction::SendToWorker(w, msg) => {
                    messages::encode_framed_into(&msg, &mut out).expect("encodes");
                    if let ToWorker::ComputeTask { key, .. } = msg {
                        queues[w.0 as usize].push_back(key);
                    }
                }
                SchedulerAction::SendToClient(_, msg) => {
                    messages::encode_framed_into(&msg, &mut out).expect("encodes");
                    if matches!(&msg, ToClient::KeyInMemory { key, .. } if key == root) {
                        done = true;
                    }
                }
                _ => {}
            }
        }
        sent += out.len();
        out.clear();
    };
    let actions = s.handle(
        SchedulerEvent::FromClient {
            client: ClientId(0),
            msg,
        },
        Time::ZERO,
    );
    take(actions, &mut queues);
    let mut now = 0;
    while queues.iter().any(|q| !q.is_empty()) {
        for w in 0..2 {
            let Some(key) = queues[w].pop_front() else {
                continue;
            };
            now += 20;
            // Through the wire, as the runtime receives it: keys arrive as fresh names.
            let report = FromWorker::TaskFinished {
                key,
                nbytes: 28,
                compute_micros: 20,
            };
            let wire = messages::encode(&report).expect("encodes");
            let msg: FromWorker = messages::decode(&wire).expect("decodes");
            let e = SchedulerEvent::FromWorker {
                worker: WorkerId(w as u32),
                msg,
            };
            let actions = s.handle(e, Time(now));
            take(actions, &mut queues);
        }
    }
    assert!(done, "the root was never reported in memory");
    sent
}

fn bench(c: &mut Criterion) {
    let (bytes, root, count) = submission();
    let mut group = c.benchmark_group("scheduler-state");
    group.throughput(Throughput::Elements(count as u64));
    group.sample_size(20);
    group.bench_function("delayed-10k-fan-in-100", |b| {
        b.iter(|| black_box(run(black_box(&bytes), &root)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
